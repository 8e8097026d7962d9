"""Conversation rules on top of a store: one turn at a time per session, bounds, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Final

import structlog

from minato.sessions.model import Session, StoredMessage
from minato.sessions.store import SessionStore
from minato.settings import Settings
from minato.upstream.wire import WireMessage

logger = structlog.get_logger("minato.sessions")

EXPIRY_INTERVAL_SECONDS: Final = 60.0


class Turn:
    """One exchange in progress on a session; holds the session's lock until released.

    The exchange is recorded only by :meth:`commit`, i.e. once the answer completed: an
    abandoned or failed answer leaves the session exactly as it was.
    """

    def __init__(self, manager: SessionManager, session_id: str, session: Session | None, lock: _SessionLock) -> None:
        self.manager = manager
        self.session_id = session_id
        self.session = session
        self._lock: _SessionLock | None = lock

    @property
    def system_prompt(self) -> str | None:
        """The session's own system prompt."""
        return self.session.system_prompt if self.session else None

    def history(self) -> list[WireMessage]:
        """The earlier messages, as Ollama takes them (images included)."""
        if self.session is None:
            return []
        return [WireMessage(role=m.role, content=m.content, images=m.images) for m in self.session.messages]

    async def commit(self, model: str, question: str, images: list[str], answer: str) -> None:
        """Record the user's message and the completed answer."""
        now = time.time()
        messages = [
            StoredMessage(role="user", content=question, images=images, image_count=len(images), at=now),
            StoredMessage(role="assistant", content=answer, model=model, at=now),
        ]
        await self.manager.store.append(
            self.session_id,
            messages,
            max_messages=self.manager.settings.session_max_messages,
            image_budget=self.manager.settings.session_image_bytes,
            now=now,
        )

    def release(self) -> None:
        """Let the next request on this session go ahead (idempotent)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            self.manager.release(self.session_id, lock)


class _SessionLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class SessionManager:
    """Serialises turns per session (sessions never wait for each other) and expires idle ones."""

    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._locks: dict[str, _SessionLock] = {}
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the store and start the periodic expiry."""
        await self.store.open()
        await self.expire()
        self._expiry = asyncio.create_task(self._expire_forever(), name="minato-session-expiry")

    async def stop(self) -> None:
        """Stop expiring and close the store."""
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await self.store.close()

    async def begin(self, session_id: str) -> Turn:
        """Wait for the session's previous turn to finish, then start a new one."""
        entry = self._locks.get(session_id)
        if entry is None:
            entry = self._locks[session_id] = _SessionLock()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._forget_lock(session_id, entry)
            raise
        try:
            session = await self.get(session_id)
        except BaseException:
            self.release(session_id, entry)
            raise
        return Turn(self, session_id, session, entry)

    def release(self, session_id: str, entry: _SessionLock) -> None:
        """Release a session's lock taken by :meth:`begin`."""
        entry.lock.release()
        self._forget_lock(session_id, entry)

    def _forget_lock(self, session_id: str, entry: _SessionLock) -> None:
        entry.users -= 1
        if entry.users == 0 and self._locks.get(session_id) is entry:
            del self._locks[session_id]

    async def get(self, session_id: str) -> Session | None:
        """Return a live session; one idle past ``session_ttl`` counts as gone."""
        session = await self.store.get(session_id)
        if session is not None and session.last_active < time.time() - self.settings.session_ttl:
            await self.store.delete(session_id)
            return None
        return session

    @contextlib.asynccontextmanager
    async def exclusive(self, session_id: str) -> AsyncIterator[Turn]:
        """Hold a session's lock for a change made outside a generation (system prompt, delete)."""
        turn = await self.begin(session_id)
        try:
            yield turn
        finally:
            turn.release()

    async def expire(self) -> int:
        """Drop idle sessions and those beyond ``max_sessions``; return how many."""
        dropped = await self.store.expire(time.time() - self.settings.session_ttl, self.settings.max_sessions)
        if dropped:
            logger.info("sessions_expired", count=dropped)
        return dropped

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)
            try:
                await self.expire()
            except Exception:  # a failing sweep must not end the loop; it is retried next minute
                logger.exception("session_expiry_failed")
