"""What each key used over the rolling 24 h: requests, prompt tokens and completion tokens, per model.

Counted in one bucket per minute, each counted for :data:`~minato.state.windows.WINDOW_MINUTES` after
its own (the quota's window, :mod:`minato.state.windows`). Three homes keep it, as they keep the rest of
the state: this process's memory (:class:`MemoryUsage`), the SQLite file
(:mod:`minato.state.sqlite.usage`) and Redis (:mod:`minato.state.redis.usage`).

A request's answer counts once, and its count must cost the request next to nothing: the SQLite and
Redis homes count in memory and write what was counted about once a second, and when the state closes
(:class:`WriteBehind`), so a request pays a dict update and never waits for the disk or the network. A
crash loses what was counted since the last write (about a second); a home that cannot write keeps
the counts and tries again, and no answer fails for it. A read adds what is not written yet, so a key
sees its own request the moment it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Final, NamedTuple, Protocol, TypeAlias

import structlog

from minato.state.windows import minute_of, oldest_live

logger = structlog.get_logger("minato.usage")

#: Seconds between the writes of what was counted (the most a crash can lose).
FLUSH_SECONDS: Final = 1.0


class Tally(NamedTuple):
    """Requests and tokens, of one key on one model (or in total)."""

    requests: int = 0
    prompt: int = 0
    completion: int = 0

    def plus(self, other: Tally) -> Tally:
        """The sum of both."""
        return Tally(self.requests + other.requests, self.prompt + other.prompt, self.completion + other.completion)


#: key name -> model -> its tally over the window (keys and models without any are left out).
Totals: TypeAlias = dict[str, dict[str, Tally]]
#: (key name, model) -> what was counted since the last write.
Batch: TypeAlias = Mapping[tuple[str, str], Tally]


def add_to(totals: Totals, key: str, model: str, tally: Tally) -> None:
    """Add ``tally`` to ``key``'s ``model`` in ``totals``."""
    models = totals.setdefault(key, {})
    found = models.get(model)
    models[model] = tally if found is None else found.plus(tally)


class UsageSink(Protocol):
    """Where a home keeps the counts (SQLite, Redis): written in batches by :class:`WriteBehind`."""

    async def add(self, batch: Batch) -> None:
        """Count ``batch`` in the current minute (the home's clock). Raises
        :class:`~minato.errors.StateUnavailableError`."""
        ...

    async def totals(self, keys: Collection[str]) -> Totals:
        """``keys``' tallies over the window. Raises :class:`~minato.errors.StateUnavailableError`."""
        ...


class WriteBehind:
    """A usage ledger that counts in memory and writes to ``sink`` every ``interval`` seconds and when
    closed. ``failed`` is told of each write that failed (the counts are kept and written with the next)."""

    def __init__(
        self, sink: UsageSink, *, interval: float = FLUSH_SECONDS, failed: Callable[[], object] | None = None
    ) -> None:
        self._sink = sink
        self._interval = interval
        self._failed = failed
        self._pending: dict[tuple[str, str], list[int]] = {}
        # A read waits for a write in flight (and the other way round), so it never counts a batch
        # twice, nor misses one: the batch is either still pending or in the sink.
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None

    def count(self, key: str, model: str, prompt: int, completion: int) -> None:
        """Count one request of ``key`` on ``model`` (a dict update; the writer starts with the first)."""
        entry = self._pending.get((key, model))
        if entry is None:
            self._pending[key, model] = [1, prompt, completion]
        else:
            entry[0] += 1
            entry[1] += prompt
            entry[2] += completion
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_on(), name="minato-usage-writer")

    async def _write_on(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what was counted; on failure keep it (logged, and ``failed`` told) for the next write."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                await self._sink.add({where: Tally(*counts) for where, counts in batch.items()})
            except Exception as exc:  # a ledger that cannot write must not fail an answer Ollama gave
                for where, counts in batch.items():
                    entry = self._pending.setdefault(where, [0, 0, 0])
                    for i, value in enumerate(counts):
                        entry[i] += value
                logger.warning("usage_write_failed", pending_keys=len(self._pending), error=str(exc))
                if self._failed is not None:
                    self._failed()

    async def totals(self, keys: Collection[str]) -> Totals:
        """``keys``' tallies: the sink's and what it has not been given yet."""
        async with self._lock:
            found = await self._sink.totals(keys)
            for (key, model), counts in self._pending.items():
                if key in keys:
                    add_to(found, key, model, Tally(*counts))
            return found

    async def close(self) -> None:
        """Stop the writer and write what is left."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            # Never cancelled mid-write (its batch would be lost, or, written after all, counted twice):
            # with the lock held it sleeps, or waits for the lock.
            async with self._lock:
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self.flush()


class MemoryUsage:
    """The usage of one process: per key and model, one ``[minute, requests, prompt, completion]`` bucket
    per minute of the window, oldest first. Bounded: configured keys, and models Ollama answered for."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: dict[tuple[str, str], deque[list[int]]] = {}

    def count(self, key: str, model: str, prompt: int, completion: int) -> None:
        """Count one request of ``key`` on ``model`` now."""
        minute = minute_of(self._clock())
        buckets = self._minutes.setdefault((key, model), deque())
        _expire(buckets, minute)
        if buckets and buckets[-1][0] == minute:
            last = buckets[-1]
            last[1] += 1
            last[2] += prompt
            last[3] += completion
        else:
            buckets.append([minute, 1, prompt, completion])

    async def totals(self, keys: Collection[str]) -> Totals:
        """``keys``' tallies over the window."""
        minute = minute_of(self._clock())
        found: Totals = {}
        for (key, model), buckets in list(self._minutes.items()):
            if key not in keys:
                continue
            _expire(buckets, minute)
            if not buckets:
                del self._minutes[key, model]
                continue
            add_to(found, key, model, Tally(*(sum(bucket[i] for bucket in buckets) for i in (1, 2, 3))))
        return found

    async def close(self) -> None:
        """Nothing to write: memory goes with the process."""


def _expire(buckets: deque[list[int]], minute: int) -> None:
    first = oldest_live(minute)
    while buckets and buckets[0][0] < first:
        buckets.popleft()


__all__ = ["FLUSH_SECONDS", "Batch", "MemoryUsage", "Tally", "Totals", "UsageSink", "WriteBehind", "add_to"]
