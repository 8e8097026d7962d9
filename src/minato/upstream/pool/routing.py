"""Which backends a request may go to, best first.

:func:`route` is a pure function of the backends (their state and inventory), the model, the time, the
parallel bound and the round-robin turn. Only a backend whose ``/api/tags`` lists model M is a
candidate for it: ``/api/ps`` goes on listing a model deleted while loaded until it expires, and that
backend answers 404. Among the available holders, in order:

1. a holder where M is loaded, fewest generations of M in flight first, while it runs fewer than
   ``parallel`` of them;
2. a holder where M is only installed, fewest generations in flight first;
3. a holder where M is loaded but already runs its share (Ollama queues it);

ties going round-robin. A request naming no model may go to every available backend, in configured
order (blobs and the create that uses them meet on one backend).

Affinity wraps it (as Olla's sticky-session selector wraps any selector): :class:`Sticky` puts the
backend a conversation last used first, while routing still lists it (available, and holding M).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog

from minato.errors import MinatoError

if TYPE_CHECKING:
    from minato.state.protocols import Affinity

logger = structlog.get_logger("minato.pool")


class Routable(Protocol):
    """What routing reads of a backend."""

    @property
    def name(self) -> str: ...
    @property
    def installed(self) -> Container[str]: ...
    @property
    def loaded(self) -> Container[str]: ...
    @property
    def in_flight(self) -> Counter[str]: ...
    @property
    def running(self) -> int: ...
    def available(self, now: float) -> bool: ...


B = TypeVar("B", bound=Routable)


def route(backends: Sequence[B], key: str | None, now: float, parallel: int, turn: int) -> list[B]:
    """The backends to try for model ``key`` (canonical; ``None``: no model), best first (see the
    module's description); ``turn`` rotates equally good ones. Empty when none may take it."""
    up = [backend for backend in backends if backend.available(now)]
    if key is None or not up:
        return up
    start = turn % len(up)
    rotated = up[start:] + up[:start]
    loaded: list[B] = []
    installed: list[B] = []
    full: list[B] = []
    for backend in rotated:
        if key not in backend.installed:
            continue  # loaded (per /api/ps) but not installed: deleted, and Ollama answers 404
        if key in backend.loaded:
            (loaded if backend.in_flight[key] < parallel else full).append(backend)
        else:
            installed.append(backend)
    # Stable sorts: equally busy backends keep their rotated (round-robin) order.
    loaded.sort(key=lambda backend: backend.in_flight[key])
    installed.sort(key=lambda backend: backend.running)
    full.sort(key=lambda backend: backend.in_flight[key])
    return loaded + installed + full


def preferring(ordered: list[B], preferred: str | None) -> list[B]:
    """``ordered`` with the backend named ``preferred`` first, if routing listed it at all."""
    if preferred is None:
        return ordered
    first = next((backend for backend in ordered if backend.name == preferred), None)
    if first is not None:
        ordered.remove(first)
        ordered.insert(0, first)
    return ordered


class Sticky:
    """Conversation affinity around routing: a conversation's turns go to the backend it last used while
    routing still lists that one. A preference, not a guarantee: a store that fails is logged and ignored."""

    def __init__(self, store: Affinity | None) -> None:
        self.store = store

    async def preferred(self, conversation: str | None) -> str | None:
        """The backend ``conversation`` last used, if known."""
        if conversation is None or self.store is None:
            return None
        try:
            return await self.store.get(conversation)
        except MinatoError as exc:
            logger.warning("affinity_unavailable", detail=exc.detail)
            return None

    async def remember(self, conversation: str | None, preferred: str | None, backend: str) -> None:
        """Note the conversation's backend when it changed (awaited: its next turn must find it)."""
        if conversation is None or self.store is None or preferred == backend:
            return
        try:
            await self.store.put(conversation, backend)
        except MinatoError as exc:
            logger.warning("affinity_unavailable", detail=exc.detail)
