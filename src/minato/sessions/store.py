"""Where conversations live: one small interface, the in-memory store, and the choice of store.

A conversation is identified by its owner (the fingerprint of the key that created it) and its id:
two keys can each have a conversation ``abc``. A shared store for several Minato replicas (Redis)
would be one more class with these methods; nothing above this package knows which store it talks
to. The SQLite store is in :mod:`minato.sessions.sqlite`, apart because all of it is SQLite's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Protocol

import msgspec

from minato.sessions.model import Bounds, Session, SessionSummary, StoredMessage, trim_plan
from minato.sessions.sqlite import SqliteStore

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
        self, owner: str, session_id: str, messages: list[StoredMessage], bounds: Bounds, *, now: float
    ) -> None:
        """Add messages to a conversation (creating it), then trim it to its bounds."""

    async def set_system_prompt(self, owner: str, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or (with ``None``) remove a conversation's system prompt, creating it if needed."""

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation (idempotent); succeeds even if its messages are damaged."""

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of one owner's conversations (``None``: every owner's), most recently
        active first, and their total count."""

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop conversations idle since before ``idle_before``, then the least recently active
        beyond ``max_sessions``; return how many were dropped."""

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
    """Conversations in a dict: fast, and gone with the process."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], Session] = {}
        self._image_bytes = 0  # kept up to date so the store-wide budget costs nothing per turn

    async def open(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Forget everything."""
        self._sessions.clear()
        self._image_bytes = 0

    def _put(self, key: tuple[str, str], session: Session | None) -> None:
        self._image_bytes += _image_bytes(session) - _image_bytes(self._sessions.get(key))
        if session is None:
            self._sessions.pop(key, None)
        else:
            self._sessions[key] = session

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
        self, owner: str, session_id: str, messages: list[StoredMessage], bounds: Bounds, *, now: float
    ) -> None:
        """Add messages, then trim."""
        current = self._current(owner, session_id, now)
        combined = [*current.messages, *messages]
        drop, strip = trim_plan([m.image_bytes for m in combined], bounds)
        kept = combined[drop:]
        kept[:strip] = [msgspec.structs.replace(message, images=[]) for message in kept[:strip]]
        self._put((owner, session_id), msgspec.structs.replace(current, messages=kept, last_active=now))

    async def set_system_prompt(self, owner: str, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or remove the system prompt."""
        current = self._current(owner, session_id, now)
        self._put((owner, session_id), msgspec.structs.replace(current, system_prompt=prompt, last_active=now))

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

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop idle conversations, then the oldest beyond the cap."""
        doomed = {key for key, s in self._sessions.items() if s.last_active < idle_before}
        alive = sorted((k for k in self._sessions if k not in doomed), key=lambda k: -self._sessions[k].last_active)
        doomed.update(alive[max_sessions:])
        for key in doomed:
            self._put(key, None)
        return len(doomed)

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
