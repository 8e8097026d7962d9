"""The backends of a pool and what each has: probing them, and keeping their inventories current.

A backend's inventory (installed and loaded models) is refreshed by every probe, and in the background
at once after anything Minato did to it (a pull, a load, a delete, a failure). Before the first routing
decision every backend is probed once (the periodic probe may be off, or not have run yet).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec
import structlog
from msgspec import UNSET

from minato.errors import InvalidInputError, MinatoError, OllamaUnavailableError
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import PsResponse, TagModel, TagsResponse
from minato.tasks import Background, SingleFlight
from minato.upstream.client import OllamaClient
from minato.upstream.pool.backend import Backend, Breaker, Report, backend_name
from minato.upstream.protocol import BackendStatus

if TYPE_CHECKING:
    import httpx

    from minato.observability.metrics import Metrics
    from minato.settings import Settings

logger = structlog.get_logger("minato.pool")
E = TypeVar("E")

#: A model no backend lists makes the pool ask every backend again, at most this often.
MIN_REFRESH_SECONDS: Final = 1.0


def each_once(entries: Iterable[E], name_of: Callable[[E], str]) -> list[E]:
    """``entries`` (several backends' lists, in configured order) with each model once, as the first
    lists it: the one list merger of the pool's answers."""
    seen: dict[str, E] = {}
    for entry in entries:
        seen.setdefault(canonical_model_name(name_of(entry)), entry)
    return list(seen.values())


def tag_name(entry: TagModel) -> str:
    """The name an ``/api/tags`` entry goes by."""
    return entry.name or entry.model


class Inventory:
    """Every backend of the pool, its health and what it has."""

    def __init__(self, settings: Settings, metrics: Metrics | None, transport: httpx.AsyncBaseTransport) -> None:
        self.settings = settings
        self.metrics = metrics
        self.single = len(settings.ollama_urls) == 1
        self.backends = [
            Backend(
                backend_name(url),
                OllamaClient(msgspec.structs.replace(settings, ollama_url=url), transport=transport),
                Breaker(settings.backend_failures, settings.backend_cooldown, trips=len(settings.ollama_urls) > 1),
            )
            for url in settings.ollama_urls
        ]
        self.by_name = {backend.name: backend for backend in self.backends}
        self.ready = False
        """Whether the first probe is over."""
        self.listed_at = -MIN_REFRESH_SECONDS
        self._first_probe: SingleFlight[None, None] = SingleFlight("minato-first-probe")
        self.background = Background("pool_task_failed")
        if metrics is not None:
            for backend in self.backends:
                backend.report = Report(metrics, backend.name)
                backend.report.in_flight.set(0)

    async def aclose(self) -> None:
        """Stop the pending probes and refreshes."""
        await self._first_probe.aclose()
        await self.background.aclose()

    def statuses(self) -> list[BackendStatus]:
        """Every backend and its state."""
        now = time.monotonic()
        statuses = []
        for backend in self.backends:
            state = backend.state(now)
            statuses.append(
                BackendStatus(
                    name=backend.name,
                    url=backend.client.base_url,
                    state=state,
                    version=backend.version or UNSET,
                    installed=len(backend.installed),
                    loaded=sorted(backend.installed.get(key, key) for key in backend.loaded),
                    in_flight=backend.running,
                    reason=(backend.breaker.reason or UNSET) if state != "up" else UNSET,
                )
            )
        return statuses

    def holders(self, model: str) -> list[str]:
        """The backends that have ``model`` installed, as last seen."""
        key = canonical_model_name(model)
        return [backend.name for backend in self.backends if key in backend.installed]

    def anyone_has(self, key: str) -> bool:
        """Whether any backend lists model ``key`` (canonical)."""
        return any(key in backend.installed for backend in self.backends)

    async def known(self) -> None:
        """Probe once before the first routing decision (concurrent first requests share that probe)."""
        if not self.ready:
            await self._first_probe.run(None, self._probe_first)

    async def _probe_first(self) -> None:
        try:
            await self.probe()
        finally:
            self.ready = True

    async def probe(self, *, inventory: bool = True) -> TagsResponse | None:
        """Refresh every backend (only its health without ``inventory``); the merged model list, or
        ``None`` when none answered."""
        answered = await asyncio.gather(*(self.refresh(backend, inventory=inventory) for backend in self.backends))
        if self.metrics is not None:
            self.metrics.ollama_up.set(1 if any(answered) else 0)
        if not any(answered):
            return None
        return TagsResponse(models=self.merged_tags([b for b, ok in zip(self.backends, answered, strict=True) if ok]))

    async def refresh(self, backend: Backend, *, inventory: bool = True) -> bool:
        """Ask one backend for its version (its health), and its installed and loaded models; ``False``
        when it cannot answer."""
        started = time.perf_counter()
        try:
            version = await backend.client.version()
            if backend.report is not None:
                backend.report.probe.observe(time.perf_counter() - started)
            if inventory:
                tags, ps = await backend.client.list_models(), await backend.client.running()
                self.take(backend, tags, ps)
        except MinatoError as exc:
            if backend.breaker.probe_failed(exc.detail):
                logger.info("backend_down", backend=backend.name, detail=exc.detail)
            backend.report_up(time.monotonic())
            return False
        backend.version = version
        if backend.breaker.probe_answered(time.monotonic()):
            logger.info("backend_up", backend=backend.name)
        backend.report_up(time.monotonic())
        return True

    def take(self, backend: Backend, tags: TagsResponse, ps: PsResponse | None) -> None:
        """Take what a backend just said it has (``ps``: what it has loaded, when it was asked)."""
        backend.tags = tags.models
        backend.installed = {canonical_model_name(tag_name(m)): tag_name(m) for m in tags.models}
        if ps is not None:
            self.take_loaded(backend, ps)

    def take_loaded(self, backend: Backend, ps: PsResponse) -> None:
        """Take what a backend just said it has loaded."""
        backend.loaded = {canonical_model_name(m.name or m.model) for m in ps.models}

    def merged_tags(self, backends: list[Backend]) -> list[TagModel]:
        """The installed models of ``backends`` (those that just answered), each once."""
        return each_once((entry for backend in backends for entry in backend.tags), tag_name)

    def refresh_soon(self, backend: Backend) -> None:
        """Refresh a backend's inventory in the background (after Minato changed it, or it failed); a
        single backend routes nothing, so its inventory waits for the next probe or list."""
        if self.single or (backend.refreshing is not None and not backend.refreshing.done()):
            return
        task = asyncio.get_running_loop().create_task(self.refresh(backend), name=f"minato-refresh-{backend.name}")
        backend.refreshing = task
        self.background.keep(task)

    def gone(self, backend: Backend, model: str) -> None:
        """Ollama said ``backend`` does not have ``model``: strike it from the inventory now, so that the
        next requests skip it, and refresh that inventory (what else changed behind Minato's back)."""
        key = canonical_model_name(model)
        if backend.installed.pop(key, None) is None:
            return  # it was not listed (no backend has the model): nothing stale to refresh
        backend.loaded.discard(key)
        backend.tags = [entry for entry in backend.tags if canonical_model_name(tag_name(entry)) != key]
        backend.client.forget(model)
        logger.info("backend_model_gone", backend=backend.name, model=model)
        self.refresh_soon(backend)

    def failed(self, backend: Backend, exc: MinatoError) -> None:
        """A request to ``backend`` failed before anything was relayed: tell its breaker, and check it."""
        if backend.breaker.failed(time.monotonic(), exc.detail):
            logger.warning(
                "backend_cooling_down",
                backend=backend.name,
                failures=backend.breaker.failures,
                seconds=self.settings.backend_cooldown,
                detail=exc.detail,
            )
            backend.report_up(time.monotonic())
        if not self.single and self.settings.ollama_probe_interval:
            self.refresh_soon(backend)

    def states(self, now: float) -> str:
        """Every backend's state, for an error's words."""
        return ", ".join(
            f"{backend.name} {backend.state(now)}" + (f" ({backend.breaker.reason})" if backend.breaker.reason else "")
            for backend in self.backends
        )

    def named(self, name: str) -> Backend:
        """The backend a client named (``host:port``)."""
        found = self.by_name.get(name)
        if found is None:
            names = ", ".join(self.by_name)
            raise InvalidInputError.single("query", "backend", f"must be one of the backends: {names}")
        return found

    async def reachable(self) -> list[Backend]:
        """The backends requests may go to now (a single backend always)."""
        if not self.single:
            await self.known()
        now = time.monotonic()
        up = [backend for backend in self.backends if backend.available(now)]
        if not up and not self.single:
            raise OllamaUnavailableError(f"no Ollama backend is reachable: {self.states(now)}")
        return up or self.backends

    async def reachable_holders(self, model: str) -> list[Backend]:
        """The reachable backends having ``model`` (asking them again when none seems to); when none
        has it, one reachable backend, whose 404 is Ollama's own."""
        key = canonical_model_name(model)
        reachable = await self.reachable()
        if self.single:
            return reachable
        if not any(key in backend.installed for backend in reachable):
            await self.probe()
            reachable = await self.reachable()
        return [backend for backend in reachable if key in backend.installed] or reachable[:1]
