"""Token quotas: the tokens a key's generations produced (Ollama's ``eval_count``) over a rolling 24 h.

The guard asks :meth:`Quota.check` before every request of a key with a quota; the request log
middleware charges what a finished request generated, from its record, so every answer is charged
once whichever route produced it. A check and a charge are apart: requests running at once may
together go past the quota by what they generate, and the next request is refused.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import accumulate
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from minato.security import Caller

BUCKET_SECONDS: Final = 60
#: Minutes a bucket counts after its own: whole minutes, so tokens count for 24 h and at most a minute more.
WINDOW_MINUTES: Final = 24 * 60


class Quota(Protocol):
    """What the guard and the request log need of a token quota (in-process here; shareable later)."""

    async def check(self, caller: Caller) -> float:
        """Return 0 if ``caller`` may go on, else the seconds until enough of its tokens expire."""
        ...

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` generated for ``caller`` now."""
        ...


class _Ledger:
    """One key's tokens: ``[minute, tokens]`` buckets, oldest first, and their sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def expire(self, minute: int) -> None:
        while self.buckets and self.buckets[0][0] + WINDOW_MINUTES < minute:
            self.total -= self.buckets.popleft()[1]


class TokenQuota:
    """The quota of one process: per key, its tokens in one bucket per minute of the last 24 h.

    Memory is bounded: only keys with a quota are tracked (configured keys, so a bounded set), each
    with at most one bucket per minute of the window.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ledgers: dict[str, _Ledger] = {}

    async def check(self, caller: Caller) -> float:
        """Return 0 while the key's tokens are under its quota, else the seconds until they are."""
        limit = caller.tokens_per_day
        ledger = self._ledgers.get(caller.fingerprint)
        if not limit or ledger is None:
            return 0.0
        now = self._clock()
        ledger.expire(int(now // BUCKET_SECONDS))
        if ledger.total < limit:
            return 0.0
        # The oldest buckets expire first: wait for the one whose expiry brings the total under the limit.
        freed = accumulate(tokens for _, tokens in ledger.buckets)
        index = next(i for i, tokens in enumerate(freed) if ledger.total - tokens < limit)
        return (ledger.buckets[index][0] + WINDOW_MINUTES + 1) * BUCKET_SECONDS - now

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` for a key with a quota (keys without one are not tracked)."""
        if not caller.tokens_per_day or tokens <= 0:
            return
        minute = int(self._clock() // BUCKET_SECONDS)
        ledger = self._ledgers.setdefault(caller.fingerprint, _Ledger())
        ledger.expire(minute)
        if ledger.buckets and ledger.buckets[-1][0] == minute:
            ledger.buckets[-1][1] += tokens
        else:
            ledger.buckets.append([minute, tokens])
        ledger.total += tokens


__all__ = ["Quota", "TokenQuota"]
