"""Where conversations live: one small interface, the in-memory store, and the choice of store.

A conversation is identified by its owner (the fingerprint of the key that created it) and its id:
two keys can each have a conversation ``abc``. A shared store for several Minato replicas (Redis)
would be one more class with these methods; nothing above this package knows which store it talks
to. The SQLite store is in :mod:`minato.state.sessions.sqlite`, apart because all of it is SQLite's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Protocol

import msgspec

from minato.state.sessions.model import Bounds, Caps, Session, SessionSummary, StoredMessage, trim_plan
from minato.state.sessions.sqlite import SqliteStore

MEMORY_URL: Final = "memory://"


class SessionStore(Protocol):
    """Persistence of conversations. Every method is safe to call from the event loop.

    Conversations are addressed by ``(owner, session_id)``; ``owner`` is a key fingerprint, or
    ``""`` for keyless deployments.
    """

    async def open(self) -> None:
        """Prepare the store (create files, schema, migrate; report damage)."""

    async def close(self) -> None:
        """Release the store's resources."""

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``; raise :class:`SessionDamagedError` if it cannot be read."""

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id, sorted."""

    async def append(
        self,
        owner: str,
        session_id: str,
        messages: list[StoredMessage],
        bounds: Bounds,
        *,
        caps: Caps,
        now: float,
    ) -> None:
        """Add messages to a conversation (creating it), trim it to its bounds, and keep the store
        within ``caps``."""

    async def set_system_prompt(
        self, owner: str, session_id: str, prompt: str | None, *, caps: Caps, now: float
    ) -> None:
        """Set or (with ``None``) remove a conversation's system prompt, creating it if needed, and
        keep the store within ``caps``."""

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation (idempotent); succeeds even if its messages are damaged."""

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of one owner's conversations (``None``: every owner's), most recently
        active first, and their total count."""

    async def expire(self, idle_before: float, caps: Caps) -> int:
        """Drop conversations idle since before ``idle_before``, then those beyond ``caps`` (every
        owner's, then the store's); return how many were dropped."""

    async def enforce_image_budget(self, budget: int) -> int:
        """Drop the oldest images of the whole store (their text stays) until at most ``budget``
        bytes are kept; return how many messages lost their images."""


def open_store(url: str) -> SessionStore:
    """Return the store a ``MINATO_SESSION_STORE`` value names."""
    if url == MEMORY_URL:
        return MemoryStore()
    return SqliteStore(Path(url.removeprefix("sqlite://")))


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
        self,
        owner: str,
        session_id: str,
        messages: list[StoredMessage],
        bounds: Bounds,
        *,
        caps: Caps,
        now: float,
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
