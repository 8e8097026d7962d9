"""The state of one process (a single worker): in memory, nothing to fail, nothing shared.

Turns wait on an :class:`asyncio.Lock` per conversation, the rate limiter and the quota are dicts:
a request pays no more than a dict look-up and, when it waits, the lock's own await. Conversations
are in a dict too (:class:`MemoryStore`), or in the SQLite file a single process may keep them in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec

from minato.state.concurrency import LocalKeyConcurrency
from minato.state.conversations import Bounds, Caps, Session, SessionSummary, StoredMessage, trim_plan
from minato.state.protocols import SessionStore, SharedState
from minato.state.windows import Bucket, QuotaWindow, Standing, bucket, peek, take_one

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.settings import Settings

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


class LocalRateLimiter:
    """A token bucket per key in a dict, refilled continuously at the rate each check names."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def check(self, key: str, per_minute: int) -> Bucket:
        """Take one request from ``key``'s bucket (``per_minute`` deep): where it stands then."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens, wait = take_one(tokens, last, now, per_minute)
        self._buckets[key] = (tokens, now)
        if wait and len(self._buckets) > _MAX_BUCKETS:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
        return bucket(tokens, wait, per_minute)

    async def peek(self, key: str, per_minute: int) -> Bucket:
        """Where ``key``'s bucket stands, nothing taken."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        return peek(tokens, last, now, per_minute)


class TokenQuota:
    """The quota of one process: per key, its tokens in one bucket per minute of the last 24 h.

    Memory is bounded: only keys with a quota are tracked (configured keys, so a bounded set), each
    with at most one bucket per minute of the window.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, QuotaWindow] = {}

    async def check(self, caller: Caller) -> Standing:
        """Where the key stands against its quota."""
        limit = caller.tokens_per_day
        window = self._windows.get(caller.fingerprint)
        if not limit or window is None:
            return Standing(0.0, limit)
        return window.standing(self._clock(), limit)

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` for a key with a quota (keys without one are not tracked)."""
        if not caller.tokens_per_day or tokens <= 0:
            return
        self._windows.setdefault(caller.fingerprint, QuotaWindow()).charge(self._clock(), tokens)


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
        concurrency=LocalKeyConcurrency(),
    )


def _image_bytes(session: Session | None) -> int:
    return sum(m.image_bytes for m in session.messages) if session else 0


class MemoryStore:
    """Conversations in a dict: fast, and gone with the process.

    Making room scans one owner's conversations, and the owners tied for holding the most: fine for
    a store that lives as long as its process (and its caps) do.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], Session] = {}
        self._held: dict[str, set[str]] = {}  # owner -> the ids of its conversations
        self._image_bytes = 0  # kept up to date so the store-wide budget costs nothing per turn

    async def open(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Forget everything."""
        self._sessions.clear()
        self._held.clear()
        self._image_bytes = 0

    def _put(self, key: tuple[str, str], session: Session | None) -> None:
        self._image_bytes += _image_bytes(session) - _image_bytes(self._sessions.get(key))
        owner, session_id = key
        if session is None:
            if self._sessions.pop(key, None) is not None:
                held = self._held[owner]
                held.discard(session_id)
                if not held:
                    del self._held[owner]
        else:
            self._sessions[key] = session
            self._held.setdefault(owner, set()).add(session_id)

    def _least_recent(self, owner: str, keep: tuple[str, str] | None) -> tuple[str, str] | None:
        """The owner's least recently active conversation other than ``keep`` (ties: the greatest id)."""
        keys = [(owner, session_id) for session_id in self._held.get(owner, ()) if (owner, session_id) != keep]
        return max(keys, key=lambda k: (-self._sessions[k].last_active, k[1]), default=None)

    def _oldest_activity(self, owner: str) -> float:
        return min(self._sessions[owner, session_id].last_active for session_id in self._held[owner])

    def _biggest_holders_least_recent(self, keep: tuple[str, str] | None) -> tuple[str, str] | None:
        """The least recently active conversation (other than ``keep``) of the owner holding the most."""
        most = max(len(held) for held in self._held.values())
        tied = [owner for owner, held in self._held.items() if len(held) == most]
        for owner in sorted(tied, key=lambda o: (self._oldest_activity(o), o)):
            victim = self._least_recent(owner, keep)
            if victim is not None:
                return victim
        return None  # only ``keep`` is left to take, which cannot be over a cap of at least one

    def _make_room(self, owners: list[str], caps: Caps, keep: tuple[str, str] | None) -> int:
        """Bring ``owners`` within the per-key cap, then the store within its cap; return how many went."""
        dropped = 0
        for owner in owners:
            while owner and len(self._held.get(owner, ())) > caps.max_per_key:
                victim = self._least_recent(owner, keep)
                if victim is None:
                    break
                self._put(victim, None)
                dropped += 1
        while len(self._sessions) > caps.max_sessions:
            victim = self._biggest_holders_least_recent(keep)
            if victim is None:
                break
            self._put(victim, None)
            dropped += 1
        return dropped

    def _current(self, owner: str, session_id: str, now: float) -> Session:
        return self._sessions.get((owner, session_id)) or Session(
            owner=owner, id=session_id, system_prompt=None, messages=[], created_at=now, last_active=now
        )

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""
        return self._sessions.get((owner, session_id))

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id."""
        return sorted(owner for owner, sid in self._sessions if sid == session_id)

    async def append(
        self, owner: str, session_id: str, messages: list[StoredMessage], bounds: Bounds, *, caps: Caps, now: float
    ) -> None:
        """Add messages, then trim, then make room."""
        current = self._current(owner, session_id, now)
        combined = [*current.messages, *messages]
        drop, strip = trim_plan([m.image_bytes for m in combined], bounds)
        kept = combined[drop:]
        kept[:strip] = [msgspec.structs.replace(message, images=[]) for message in kept[:strip]]
        self._put((owner, session_id), msgspec.structs.replace(current, messages=kept, last_active=now))
        self._make_room([owner], caps, keep=(owner, session_id))

    async def set_system_prompt(
        self, owner: str, session_id: str, prompt: str | None, *, caps: Caps, now: float
    ) -> None:
        """Set or remove the system prompt, then make room."""
        current = self._current(owner, session_id, now)
        self._put((owner, session_id), msgspec.structs.replace(current, system_prompt=prompt, last_active=now))
        self._make_room([owner], caps, keep=(owner, session_id))

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation."""
        self._put((owner, session_id), None)

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of conversations."""
        chosen = [s for s in self._sessions.values() if owner is None or s.owner == owner]
        chosen.sort(key=lambda s: (-s.last_active, s.id, s.owner))
        page = [
            SessionSummary(owner=s.owner, id=s.id, message_count=len(s.messages), last_active=s.last_active)
            for s in chosen[offset : offset + limit]
        ]
        return page, len(chosen)

    async def expire(self, idle_before: float, caps: Caps) -> int:
        """Drop idle conversations, then those beyond the caps."""
        idle = [key for key, s in self._sessions.items() if s.last_active < idle_before]
        for key in idle:
            self._put(key, None)
        over = sorted(owner for owner, held in self._held.items() if len(held) > caps.max_per_key)
        return len(idle) + self._make_room(over, caps, keep=None)

    async def enforce_image_budget(self, budget: int) -> int:
        """Strip the oldest images of the whole store until it is within ``budget``."""
        if self._image_bytes <= budget:
            return 0
        held = sorted(
            (message.at, key, index)
            for key, session in self._sessions.items()
            for index, message in enumerate(session.messages)
            if message.images
        )
        stripped: dict[tuple[str, str], set[int]] = {}
        excess = self._image_bytes - budget
        for _, key, index in held:
            if excess <= 0:
                break
            excess -= self._sessions[key].messages[index].image_bytes
            stripped.setdefault(key, set()).add(index)
        for key, indexes in stripped.items():
            session = self._sessions[key]
            messages = [
                msgspec.structs.replace(m, images=[]) if i in indexes else m for i, m in enumerate(session.messages)
            ]
            self._put(key, msgspec.structs.replace(session, messages=messages))
        return sum(len(indexes) for indexes in stripped.values())


__all__ = [
    "LocalAffinity",
    "LocalRateLimiter",
    "LocalTurnLocks",
    "MemoryHealth",
    "MemoryStore",
    "TokenQuota",
    "local_state",
]
