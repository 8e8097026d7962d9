"""The one thing a use case needs of its client's connection: to stop waiting when the client leaves."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Watch(Protocol):
    """Ends a wait the moment the request's client disconnects, so Ollama stops computing an answer
    nobody will read. The web layer keeps one per request (:mod:`minato.web.disconnect`)."""

    async def until(self, work: Awaitable[T]) -> T:
        """Await ``work``; raise :class:`~minato.errors.ClientDisconnectedError` instead, cancelling it,
        if the client disconnects first (or already did). Only called once the request body was read:
        watching for the disconnect consumes it."""
        ...


__all__ = ["Watch"]
