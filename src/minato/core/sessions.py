"""Conversation rules on top of a store: one turn at a time per session, bounds, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from minato.ollama.wire import WireMessage
from minato.settings import Settings
from minato.state.conversations import Bounds, Caps, Session, SessionSummary, StoredMessage
from minato.state.protocols import SessionStore
from minato.tasks import cancel_and_wait

if TYPE_CHECKING:
    from minato.state.protocols import HeldTurn, TurnLocks

logger = structlog.get_logger("minato.sessions")

EXPIRY_INTERVAL_SECONDS: Final = 60.0


@dataclass(slots=True, eq=False)
class Turn:
    """One exchange in progress on a session; holds the session's turn until released.

    The exchange is recorded only by :meth:`commit`, i.e. once the answer completed: an
    abandoned or failed answer leaves the session exactly as it was.
    """

    manager: SessionManager
    owner: str
    session_id: str
    session: Session | None
    _held: HeldTurn

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
        manager = self.manager
        await manager.store.append(self.owner, self.session_id, messages, manager.bounds, caps=manager.caps, now=now)
        if images:
            await self.manager.enforce_image_budget()

    def release(self) -> None:
        """Let the next request on this session go ahead (idempotent)."""
        self._held.release()


class SessionManager:
    """Serialises turns per conversation through ``turns`` (conversations never wait for each other,
    whoever owns them) and expires idle ones. The store is opened and closed by its owner (the
    shared state, :func:`minato.state.open_state`)."""

    def __init__(self, store: SessionStore, turns: TurnLocks, settings: Settings) -> None:
        self.store = store
        self.turns = turns
        self.settings = settings
        self.bounds = Bounds(max_messages=settings.session_max_messages, image_budget=settings.session_image_bytes)
        self.caps = Caps(max_sessions=settings.max_sessions, max_per_key=settings.max_sessions_per_key)
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Sweep once, and start the periodic expiry."""
        await self._expire_logged()
        self._expiry = asyncio.create_task(self._expire_forever(), name="minato-session-expiry")

    async def stop(self) -> None:
        """Stop expiring."""
        await cancel_and_wait(self._expiry)

    async def begin(self, owner: str, session_id: str) -> Turn:
        """Wait for the conversation's previous turn to finish, then start a new one."""
        held = await self.turns.acquire(owner, session_id)
        try:
            session = await self.get(owner, session_id)
        except BaseException:
            held.release()
            raise
        return Turn(self, owner, session_id, session, held)

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a live conversation; one idle past ``session_ttl`` counts as gone."""
        session = await self.store.get(owner, session_id)
        if session is not None and session.last_active < time.time() - self.settings.session_ttl:
            await self.store.delete(owner, session_id)
            return None
        return session

    @contextlib.asynccontextmanager
    async def exclusive(self, owner: str, session_id: str) -> AsyncIterator[None]:
        """Hold a conversation's turn for a change made outside a generation (system prompt,
        delete). It does not read the conversation, so a damaged one can still be deleted."""
        held = await self.turns.acquire(owner, session_id)
        try:
            yield
        finally:
            held.release()

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation once its running turn (if any) is over; a damaged one too."""
        async with self.exclusive(owner, session_id):
            await self.store.delete(owner, session_id)

    async def set_system_prompt(self, owner: str, session_id: str, prompt: str | None) -> None:
        """Set or (``None``) remove a conversation's system prompt between turns, creating it if new."""
        async with self.exclusive(owner, session_id):
            await self.store.set_system_prompt(owner, session_id, prompt, caps=self.caps, now=time.time())

    async def page(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """A page of one owner's conversations (``None``: everyone's), most recently active first."""
        return await self.store.list(owner, offset, limit)

    async def owners_of(self, session_id: str) -> list[str]:
        """The owners having a conversation with this id."""
        return await self.store.owners_of(session_id)

    async def enforce_image_budget(self) -> int:
        """Keep the whole store within ``store_image_bytes``; a failure is logged, never raised:
        the turn that triggered it is already recorded."""
        try:
            stripped = await self.store.enforce_image_budget(self.settings.store_image_bytes)
        except Exception:
            logger.exception("session_image_budget_failed")
            return 0
        if stripped:
            logger.info("session_images_dropped", messages=stripped, budget=self.settings.store_image_bytes)
        return stripped

    async def expire(self) -> int:
        """Drop idle sessions and those beyond the caps (per key, then the store's); return how many."""
        dropped = await self.store.expire(time.time() - self.settings.session_ttl, self.caps)
        if dropped:
            logger.info("sessions_expired", count=dropped)
        return dropped

    async def _expire_logged(self) -> None:
        try:
            await self.expire()
        except Exception:  # a failing sweep must not stop Minato; it is retried next minute
            logger.exception("session_expiry_failed")

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)
            await self._expire_logged()
