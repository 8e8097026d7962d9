"""The state of one process (a single worker): in memory, nothing to fail, nothing shared.

Turns wait on an :class:`asyncio.Lock` per conversation, the rate limiter and the quota are dicts:
a request pays no more than a dict look-up and, when it waits, the lock's own await.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from minato.state.protocols import SharedState
from minato.state.quota import BUCKET_SECONDS, WINDOW_MINUTES, Standing, standing

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.settings import Settings
    from minato.state.sessions.store import SessionStore

#: Rate-limited keys kept before idle ones are forgotten (keys with a rate are configured keys: a
#: bounded set; this bounds it whatever asks).
_MAX_BUCKETS: Final = 100_000


class _TurnLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _HeldTurn:
    """One holding of a conversation's lock; releasing it twice releases it once."""

    __slots__ = ("_entry", "_key", "_locks")

    def __init__(self, locks: LocalTurnLocks, key: tuple[str, str], entry: _TurnLock) -> None:
        self._locks = locks
        self._key = key
        self._entry: _TurnLock | None = entry

    def release(self) -> None:
        """Let the conversation's next turn go ahead."""
        if self._entry is not None:
            entry, self._entry = self._entry, None
            entry.lock.release()
            self._locks.forget(self._key, entry)


class LocalTurnLocks:
    """One :class:`asyncio.Lock` per conversation with a turn running or waiting; none for the others."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], _TurnLock] = {}

    async def acquire(self, owner: str, session_id: str) -> _HeldTurn:
        """Wait for the conversation's previous turn, then hold its turn."""
        key = (owner, session_id)
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _TurnLock()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self.forget(key, entry)
            raise
        return _HeldTurn(self, key, entry)

    def forget(self, key: tuple[str, str], entry: _TurnLock) -> None:
        """Drop a conversation's lock once nobody holds it or waits for it."""
        entry.users -= 1
        if entry.users == 0 and self._locks.get(key) is entry:
            del self._locks[key]


def take_one(tokens: float, last: float, now: float, per_minute: int) -> tuple[float, float]:
    """Refill a bucket holding ``tokens`` at ``last`` up to ``now`` and take one request from it: return
    what it holds then, and 0 or (nothing taken) the seconds until one request is there."""
    rate = per_minute / 60.0
    tokens = min(float(per_minute), tokens + max(0.0, now - last) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class LocalRateLimiter:
    """A token bucket per key in a dict, refilled continuously at the rate each check names."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def check(self, key: str, per_minute: int) -> float:
        """Take one request from ``key``'s bucket (``per_minute`` deep); return 0, or the seconds to wait."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens, wait = take_one(tokens, last, now, per_minute)
        self._buckets[key] = (tokens, now)
        if wait and len(self._buckets) > _MAX_BUCKETS:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
        return wait


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

    async def check(self, caller: Caller) -> Standing:
        """Where the key stands against its quota."""
        limit = caller.tokens_per_day
        ledger = self._ledgers.get(caller.fingerprint)
        if not limit or ledger is None:
            return Standing(0.0, limit)
        now = self._clock()
        ledger.expire(int(now // BUCKET_SECONDS))
        return standing(ledger.buckets, ledger.total, limit, now)

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


class LocalAffinity:
    """Conversation → backend in a dict, at most ``max_entries`` (the least recently put go first),
    each forgotten ``ttl`` seconds after it was last put (as its idle conversation is)."""

    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._ttl = ttl
        self._clock = clock
        self._backends: dict[str, tuple[str, float]] = {}  # in order of the last put: oldest first

    async def get(self, key: str) -> str | None:
        """The backend ``key`` last used, unless that was longer than ``ttl`` ago."""
        entry = self._backends.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._backends[key]
            return None
        return entry[0]

    async def put(self, key: str, backend: str) -> None:
        """Remember ``backend`` for ``key``, forgetting the oldest entry beyond the bound."""
        self._backends.pop(key, None)
        self._backends[key] = (backend, self._clock() + self._ttl)
        if len(self._backends) > self._max_entries:
            del self._backends[next(iter(self._backends))]


class MemoryHealth:
    """The health of state kept in this process's memory: it always answers."""

    @property
    def name(self) -> str:
        """``memory``."""
        return "memory"

    async def ping(self) -> str | None:
        """Always ``None``: memory answers."""
        return None


def local_state(store: SessionStore, settings: Settings) -> SharedState:
    """The state of one process around ``store`` (an opened store of conversations)."""
    return SharedState(
        store=store,
        turns=LocalTurnLocks(),
        limiter=LocalRateLimiter(),
        quota=TokenQuota(),
        affinity=LocalAffinity(settings.max_sessions, settings.session_ttl),
        health=MemoryHealth(),
    )


__all__ = [
    "LocalAffinity",
    "LocalRateLimiter",
    "LocalTurnLocks",
    "MemoryHealth",
    "TokenQuota",
    "local_state",
    "take_one",
]
