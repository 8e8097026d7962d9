"""What each key used, in Redis, the same for every replica.

``minato:usage:<key name>:<hour>`` (hash ``"<minute> <r|p|c> <model>"`` → requests, prompt or
completion tokens; expires once its last minute has left the 24 h window)
    One hash per key and hour of its minutes, written by ``lua/usage_add.lua`` (a batch at a time, in
    the minute of Redis's own clock, as the limit scripts count) and summed over the window by
    ``lua/usage_read.lua``, which reads the 25 hashes a key's window touches.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Final, cast

from minato.state.redis.link import PREFIX
from minato.state.usage import Batch, Tally, Totals
from minato.state.windows import BUCKET_SECONDS, WINDOW_MINUTES

if TYPE_CHECKING:
    from minato.state.redis.link import Link

USAGE_PREFIX: Final = f"{PREFIX}usage:"
#: Keys read by one script run, so a reading of a thousand keys never holds Redis for long at once.
_KEYS_PER_READ: Final = 50


class RedisUsage:
    """The usage sink of Redis (see :class:`~minato.state.usage.UsageSink`). ``now`` is for the tests
    that move time (``""``: Redis's own clock)."""

    def __init__(self, link: Link, now: str = "") -> None:
        self._link = link
        self._now = now
        self._add = link.script("clock", "usage_add")
        self._read = link.script("clock", "usage_read")

    def _head(self) -> list[str | int]:
        return [USAGE_PREFIX, BUCKET_SECONDS, WINDOW_MINUTES, self._now]

    async def add(self, batch: Batch) -> None:
        """Count ``batch`` in the current minute of Redis's clock."""
        args = self._head()
        for (key, model), tally in batch.items():
            args.extend((key, model, *tally))
        await self._link.run(self._add(keys=[], args=args))

    async def totals(self, keys: Collection[str]) -> Totals:
        """``keys``' tallies over the window."""
        names = sorted(keys)
        found: Totals = {}
        for start in range(0, len(names), _KEYS_PER_READ):
            chunk = names[start : start + _KEYS_PER_READ]
            args = [*self._head(), *chunk]
            rows = cast("list[list[bytes | int]]", await self._link.run(self._read(keys=[], args=args)))
            for key, row in zip(chunk, rows, strict=True):
                models = found.setdefault(key, {})
                for i in range(0, len(row), 4):
                    model = cast("bytes", row[i]).decode()
                    models[model] = Tally(int(row[i + 1]), int(row[i + 2]), int(row[i + 3]))
                if not models:
                    del found[key]
        return found


__all__ = ["USAGE_PREFIX", "RedisUsage"]
