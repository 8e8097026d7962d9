"""The pool as callers see it: one object answering as one Ollama would, over one or several backends.

Each backend is an :class:`~minato.upstream.client.OllamaClient` with what the pool knows of it
(:mod:`.backend`, :mod:`.inventory`). A request goes to the backends :mod:`.routing` lists, tried in
order by :mod:`.failover`; a conversation goes on with the backend it last used while that one is
healthy and has the model. When no backend has the model, one healthy backend is asked anyway, so the
client gets Ollama's own 404 in its door's words. A backend failing ``MINATO_BACKEND_FAILURES`` times
in a row is left out for ``MINATO_BACKEND_COOLDOWN`` seconds, and comes back once that is over and a
probe answers (the probe, not a client's request, is the trial). Model management acts on the whole
fleet (:mod:`.fanout`).

A pool of one backend routes nothing: that Ollama is always asked, so it says best what is wrong.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from minato.errors import OllamaUnavailableError
from minato.ollama.names import canonical_model_name
from minato.upstream.client import connections_for
from minato.upstream.pool.failover import MissingModelError, attempt, until_closed, vet
from minato.upstream.pool.fanout import Fleet
from minato.upstream.pool.inventory import MIN_REFRESH_SECONDS, Inventory
from minato.upstream.pool.routing import Sticky, preferring, route
from minato.upstream.ports import Forward, Spread

#: The metric label of every model Ollama does not have.
OTHER: Final = "other"

if TYPE_CHECKING:
    from msgspec import UnsetType

    from minato.observability.metrics import Metrics
    from minato.ollama.wire import ChatChunk, ChatRequest, PsResponse, ShowResponse, TagsResponse
    from minato.settings import Settings
    from minato.state.protocols import Affinity
    from minato.upstream.client import ModelFacts, OllamaClient
    from minato.upstream.pool.backend import Backend
    from minato.upstream.ports import BackendStatus
    from minato.upstream.streams import ChunkStream, PullProgressStream, RawResponse

T = TypeVar("T")


class OllamaPool:
    """The upstream interface over one or several Ollama backends (see the module's description)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        affinity: Affinity | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.affinity = affinity
        # One connection pool for every backend: the engine keeps a host pool of connections per backend in it.
        self._connections = connections_for(settings)
        self.base_url = ", ".join(settings.ollama_urls)
        self._inventory = inventory = Inventory(settings, metrics, self._connections)
        self._backends = inventory.backends
        self._single = inventory.single
        self._sticky = Sticky(None if inventory.single else affinity)
        self._fleet = Fleet(inventory, self._candidates)
        self._turn = 0  # round-robin position among equally good candidates

    async def aclose(self) -> None:
        """Stop the pending refreshes and close the connections, once for every backend."""
        await self._inventory.aclose()
        await self._connections.aclose()

    # -- what the pool knows -------------------------------------------------------------------

    def backends(self) -> list[BackendStatus]:
        """Every backend and its state."""
        return self._inventory.statuses()

    def holders(self, model: str) -> list[str]:
        """The backends that have ``model`` installed, as last seen."""
        return self._inventory.holders(model)

    async def knows(self, model: str) -> bool | None:
        """Whether Ollama has ``model``; ``None`` when Ollama cannot be asked (so nobody can tell)."""
        return await self._inventory.knows(model, self.facts)

    def label(self, model: str | None) -> str:
        """The metric label of ``model``: its name as Ollama lists it, or ``other``; empty for no model."""
        if not model:
            return ""
        key = canonical_model_name(model)
        inventory = self._inventory
        return inventory.names.get(key) or inventory.shown.get(key) or OTHER

    def similar(self, name: str, limit: int = 3) -> list[str]:
        """Installed models whose names look like ``name`` (for a helpful 404)."""
        return difflib.get_close_matches(name, list(self._inventory.names.values()), n=limit, cutoff=0.6)

    async def probe(self, *, inventory: bool = True) -> TagsResponse | None:
        """Refresh every backend (only its health without ``inventory``); the merged model list, or
        ``None`` when none answered."""
        return await self._inventory.probe(inventory=inventory)

    # -- routing -------------------------------------------------------------------------------

    async def _candidates(self, model: str | None, preferred: str | None = None) -> list[Backend]:
        """The backends to try for a request, best first; ``preferred`` names the backend the request's
        conversation last used."""
        if self._single:
            return self._backends
        inventory = self._inventory
        if not inventory.ready:
            await inventory.known()
        now = time.monotonic()
        key = canonical_model_name(model) if model else None
        ordered = self._route(key, preferred, now)
        if ordered:
            return ordered
        if key is not None and not inventory.anyone_has(key) and now - inventory.listed_at >= MIN_REFRESH_SECONDS:
            inventory.listed_at = now  # a model installed behind Minato's back, perhaps: look once more
            await inventory.probe()
            ordered = self._route(key, preferred, time.monotonic())
            if ordered:
                return ordered
        up = [backend for backend in self._backends if backend.available(time.monotonic())]
        if key is not None and inventory.anyone_has(key):
            holders = ", ".join(f"{b.name} ({b.state(now)})" for b in self._backends if key in b.installed)
            raise OllamaUnavailableError(f"no backend that has '{model}' is reachable now: {holders}")
        if up:
            return up[:1]  # no backend has the model: one says so in Ollama's own words
        raise OllamaUnavailableError(f"no Ollama backend is reachable: {inventory.states(now)}")

    def _route(self, key: str | None, preferred: str | None, now: float) -> list[Backend]:
        if key is not None:
            self._turn = (self._turn + 1) % len(self._backends)
        return preferring(route(self._backends, key, now, self.settings.backend_parallel, self._turn), preferred)

    async def _attempt(
        self, candidates: list[Backend], call: Callable[[OllamaClient], Awaitable[T]], model: str | None = None
    ) -> T:
        return (await attempt(self._inventory, candidates, call, model=model))[1]

    # -- generation ----------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChatChunk:
        """A whole answer from the backend routing picks."""
        preferred = await self._sticky.preferred(affinity)
        candidates = await self._candidates(request.model, preferred)
        backend, chunk = await attempt(
            self._inventory, candidates, lambda client: client.chat(request), model=request.model, generation=True
        )
        backend.finished(canonical_model_name(request.model))
        await self._sticky.remember(affinity, preferred, backend.name)
        return msgspec.structs.replace(chunk, backend=backend.name)

    async def stream_chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChunkStream:
        """A primed stream from the backend routing picks; it counts as in flight there until closed."""
        preferred = await self._sticky.preferred(affinity)
        candidates = await self._candidates(request.model, preferred)
        backend, stream = await attempt(
            self._inventory,
            candidates,
            lambda client: client.stream_chat(request),
            model=request.model,
            generation=True,
        )
        until_closed(backend, request.model, stream)
        try:
            await self._sticky.remember(affinity, preferred, backend.name)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    # -- one model -----------------------------------------------------------------------------

    async def show(self, model: str) -> ShowResponse:
        """A model's details, from a backend that has it."""
        return await self._attempt(await self._candidates(model), lambda client: client.show(model), model)

    async def capabilities(self, model: str) -> frozenset[str]:
        """A model's capabilities (cached per backend)."""
        return (await self.facts(model)).capabilities

    async def facts(self, model: str) -> ModelFacts:
        """What Minato needs to know of a model (cached per backend)."""
        return await self._attempt(await self._candidates(model), lambda client: client.facts(model), model)

    def forget(self, model: str) -> None:
        """Drop every backend's cached facts about a model."""
        for backend in self._backends:
            backend.client.forget(model)

    async def version(self) -> str:
        """The version of the first backend that answers."""
        return await self._attempt(await self._candidates(None), lambda client: client.version())

    # -- the fleet -----------------------------------------------------------------------------

    async def pull(self, model: str, backend: str | None = None) -> PullProgressStream:
        """Pull onto every reachable backend (or the named one); return once each found the manifest."""
        return await self._fleet.pull(model, backend)

    async def load(
        self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any], backend: str | None = None
    ) -> str:
        """Load where routing would send the model's next request (or on the named backend)."""
        return await self._fleet.load(model, keep_alive, options, backend)

    async def unload(self, model: str) -> None:
        """Unload the model from every backend that has it."""
        await self._fleet.unload(model)

    async def delete(self, model: str) -> None:
        """Delete the model from every backend that has it (a 404 when none has)."""
        await self._fleet.delete(model)

    async def running(self) -> PsResponse:
        """Every backend's loaded models, each with its backend."""
        return await self._fleet.running()

    async def list_models(self) -> TagsResponse:
        """Every backend's installed models, each once."""
        return await self._fleet.list_models()

    # -- relaying --------------------------------------------------------------------------------

    async def forward(
        self, request: Forward, *, model: str | None = None, generation: bool = False, spread: Spread = Spread.ONE
    ) -> RawResponse:
        """Relay a request to the backends ``spread`` names (see :class:`~minato.upstream.ports.Spread`)."""

        def send(client: OllamaClient) -> Awaitable[RawResponse]:
            return client.forward(request)

        if spread is Spread.ONE or self._single:
            candidates = await self._candidates(model)
            try:
                backend, answer = await attempt(
                    self._inventory, candidates, send, model=model, generation=generation and bool(model), vet=vet
                )
            except MissingModelError as missing:  # the last holder's 404, as Ollama said it
                missing.answer.backend = missing.backend
                return missing.answer
            if generation and model:
                until_closed(backend, model, answer)
            else:
                answer.backend = backend.name
            return answer
        fleet = self._fleet
        if spread is Spread.HOLDERS:
            return await fleet.forward_all(await self._inventory.reachable_holders(model or ""), send, streamed=False)
        if spread is Spread.EVERY:
            return await fleet.forward_all(await self._inventory.reachable(), send, streamed=True)
        return await fleet.merged_listing(send, loaded=spread is Spread.LOADED, where=self.base_url)
