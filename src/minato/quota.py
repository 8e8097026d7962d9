"""Token quotas: the tokens a key's generations produced (Ollama's ``eval_count``) over a rolling 24 h.

The guard asks :meth:`Quota.check` before every request of a key with a quota; the request log
middleware charges what a finished request generated, from its record, so every answer is charged
once whichever route produced it. A check and a charge are apart: requests running at once may
together go past the quota by what they generate, and the next request is refused.

Every home of the state (:mod:`minato.state`) keeps a key's tokens the same way: one bucket per
minute, counted for :data:`WINDOW_MINUTES` after its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from minato.security import Caller

BUCKET_SECONDS: Final = 60
#: Minutes a bucket counts after its own: whole minutes, so tokens count for 24 h and at most a minute more.
WINDOW_MINUTES: Final = 24 * 60


class Quota(Protocol):
    """What the guard and the request log need of a token quota, whichever home keeps it."""

    async def check(self, caller: Caller) -> float:
        """Return 0 if ``caller`` may go on, else the seconds until enough of its tokens expire.
        Raises :class:`~minato.errors.StateUnavailableError` when its home cannot answer."""
        ...

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` generated for ``caller`` now."""
        ...


def seconds_until_under(buckets: Sequence[Sequence[int]], total: int, limit: int, now: float) -> float:
    """Given a key's live ``(minute, tokens)`` buckets, oldest first, and their ``total``: 0 while it is
    under ``limit``, else the seconds until the expiry of its oldest buckets brings it under."""
    if total < limit:
        return 0.0
    freed = accumulate(tokens for _, tokens in buckets)
    index = next(i for i, tokens in enumerate(freed) if total - tokens < limit)
    return (buckets[index][0] + WINDOW_MINUTES + 1) * BUCKET_SECONDS - now


__all__ = ["BUCKET_SECONDS", "WINDOW_MINUTES", "Quota", "seconds_until_under"]
