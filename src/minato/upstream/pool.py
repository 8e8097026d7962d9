"""A pool of Ollama backends behind the one upstream interface, answering as one Ollama would.

Each backend is an :class:`~minato.upstream.client.OllamaClient` with what the pool knows of it: its
installed and loaded models (its *inventory*, refreshed by every probe and at once after anything
Minato does to it), the generations running on it, and its health.

Only a backend whose ``/api/tags`` lists model M is a candidate for it: ``/api/ps`` goes on listing a
model deleted while loaded until it expires, and that backend answers 404. Among the holders, in order:

1. the backend the conversation last used (``affinity``), while it is healthy and has M;
2. a holder where M is loaded, fewest generations of M in flight first, while it runs fewer than
   ``MINATO_BACKEND_PARALLEL`` of them;
3. a holder where M is only installed, fewest generations in flight first;
4. a holder where M is loaded but already runs its share (Ollama queues it);

ties going round-robin. When no backend has M, one healthy backend is asked anyway, so the client
gets Ollama's own 404 in its door's words. A refused or broken connection, or Ollama's "server busy"
503, before anything was relayed makes the pool try the next candidate at once; a backend failing
``MINATO_BACKEND_FAILURES`` times in a row is left out for ``MINATO_BACKEND_COOLDOWN`` seconds, and
comes back once that is over and a probe answers (the probe, not a client's request, is the trial).
Ollama's "model not found" before anything was relayed means the pool's inventory of that backend is
stale (M was deleted behind Minato's back): M is struck from it at once, its inventory is refreshed,
and the next holder is tried; the last holder's 404 reaches the client as Ollama said it. That backend
answered, so it is no failure for the breaker.

A pool of one backend routes nothing: that Ollama is always asked, so it says best what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpx
import msgspec
import structlog
from msgspec import UNSET, UnsetType

from minato.errors import (
    InvalidInputError,
    MinatoError,
    ModelNotFoundError,
    OllamaBusyError,
    OllamaConnectionLostError,
    OllamaUnavailableError,
)
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import (
    ChatChunk,
    ChatRequest,
    PsResponse,
    PullProgress,
    ShowResponse,
    TagModel,
    TagsResponse,
)
from minato.tasks import cancel_and_wait
from minato.upstream.client import ModelFacts, OllamaClient, default_transport
from minato.upstream.failures import says_model_missing
from minato.upstream.protocol import BackendStatus, Spread
from minato.upstream.streams import ChunkStream, PullProgressStream, PullStream, RawResponse

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics
    from minato.settings import Settings
    from minato.state.protocols import Affinity

logger = structlog.get_logger("minato.pool")
T = TypeVar("T")

#: Failures before the first byte reached the client after which the next backend is tried: no
#: connection, Ollama's "server busy", or a connection lost (also mid-way through a whole answer, which
#: Minato reads as a stream and has sent nothing of yet).
FAILOVER_ERRORS: Final = (OllamaUnavailableError, OllamaBusyError, OllamaConnectionLostError)
#: A model no backend lists makes the pool ask every backend again, at most this often.
MIN_REFRESH_SECONDS: Final = 1.0
_JSON: Final = "application/json; charset=utf-8"
_JSON_TYPE: Final = "application/json"
_NDJSON: Final = "application/x-ndjson"
_SUCCESS: Final = b'"status":"success"'


def backend_name(url: str) -> str:
    """``host:port`` of a backend's URL: how logs, metrics and answers name it."""
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{host}:{port}"


class Backend:
    """One Ollama of the pool and what the pool knows of it."""

    __slots__ = (
        "client",
        "cool_until",
        "failures",
        "in_flight",
        "installed",
        "loaded",
        "name",
        "probed",
        "reason",
        "refreshing",
        "report",
        "running",
        "tags",
        "version",
    )

    def __init__(self, name: str, client: OllamaClient) -> None:
        self.name = name
        self.client = client
        self.installed: dict[str, str] = {}
        """Installed models: canonical name -> the name Ollama lists."""
        self.tags: list[TagModel] = []
        """Its last ``/api/tags`` entries, whole (merged into the pool's list)."""
        self.loaded: set[str] = set()
        """Canonical names of the models loaded in memory."""
        self.in_flight: Counter[str] = Counter()
        self.running = 0
        self.failures = 0
        self.cool_until = 0.0
        self.probed: bool | None = None
        """Whether it answered its last probe (``None``: not probed yet)."""
        self.reason = ""
        self.version = ""
        self.refreshing: asyncio.Task[bool] | None = None
        self.report: _Report | None = None
        """Its metrics, labelled once (a label lookup per request would cost more than the routing)."""

    def available(self, now: float) -> bool:
        """Whether requests may go to it now."""
        return self.probed is not False and now >= self.cool_until

    def state(self, now: float) -> str:
        """``up``, ``down``, ``cooling`` or ``unknown``."""
        if now < self.cool_until:
            return "cooling"
        return {True: "up", False: "down", None: "unknown"}[self.probed]


class _Report:
    """One backend's metric series."""

    __slots__ = ("failovers", "in_flight", "probe", "requests", "up")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.up = metrics.backend_up.labels(name)
        self.in_flight = metrics.backend_in_flight.labels(name)
        self.requests = metrics.backend_requests.labels(name)
        self.failovers = metrics.backend_failovers.labels(name)
        self.probe = metrics.backend_probe.labels(name)


class OllamaPool:
    """The upstream interface over one or several Ollama backends (see the module's description)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        affinity: Affinity | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.affinity = affinity
        # One connection pool for every backend: aiohttp keeps connections per host within it.
        self._transport = transport if transport is not None else default_transport(settings)
        urls = settings.ollama_urls
        self.base_url = ", ".join(urls)
        self._backends = [
            Backend(
                backend_name(url),
                OllamaClient(msgspec.structs.replace(settings, ollama_url=url), transport=self._transport),
            )
            for url in urls
        ]
        self._by_name = {backend.name: backend for backend in self._backends}
        self._single = len(self._backends) == 1
        self._turn = 0  # round-robin position among equally good candidates
        self._listed_at = -MIN_REFRESH_SECONDS
        self._first_probe: asyncio.Task[TagsResponse | None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        if metrics is not None:
            for backend in self._backends:
                backend.report = _Report(metrics, backend.name)
                backend.report.in_flight.set(0)

    async def aclose(self) -> None:
        """Stop the pending refreshes and close the connections, once for every backend."""
        for task in list(self._tasks):
            await cancel_and_wait(task)
        await self._transport.aclose()

    # -- what the pool knows -------------------------------------------------------------------

    def backends(self) -> list[BackendStatus]:
        """Every backend and its state."""
        now = time.monotonic()
        statuses = []
        for backend in self._backends:
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
                    reason=(backend.reason or UNSET) if state != "up" else UNSET,
                )
            )
        return statuses

    def holders(self, model: str) -> list[str]:
        """The backends that have ``model`` installed, as last seen."""
        key = canonical_model_name(model)
        return [backend.name for backend in self._backends if key in backend.installed]

    async def _known(self) -> None:
        """Probe once before the first routing decision (the periodic probe may be off, or not have run yet)."""
        if self._first_probe is None:
            self._first_probe = asyncio.get_running_loop().create_task(self.probe(), name="minato-first-probe")
            self._keep(self._first_probe)
        if not self._first_probe.done():
            await asyncio.shield(self._first_probe)

    async def probe(self, *, inventory: bool = True) -> TagsResponse | None:
        """Refresh every backend (only its health without ``inventory``); the merged model list, or
        ``None`` when none answered."""
        answered = await asyncio.gather(*(self._refresh(backend, inventory=inventory) for backend in self._backends))
        if self.metrics is not None:
            self.metrics.ollama_up.set(1 if any(answered) else 0)
        if not any(answered):
            return None
        return TagsResponse(models=self._merged_tags([b for b, ok in zip(self._backends, answered, strict=True) if ok]))

    async def _refresh(self, backend: Backend, *, inventory: bool = True) -> bool:
        """Ask one backend for its version (its health), and its installed and loaded models; ``False``
        when it cannot answer."""
        started = time.perf_counter()
        try:
            version = await backend.client.version()
            if backend.report is not None:
                backend.report.probe.observe(time.perf_counter() - started)
            if inventory:
                tags, ps = await backend.client.list_models(), await backend.client.running()
                self._take_inventory(backend, tags, ps)
        except MinatoError as exc:
            if backend.probed is not False:
                logger.info("backend_down", backend=backend.name, detail=exc.detail)
            backend.probed, backend.reason = False, exc.detail
            self._report_up(backend)
            return False
        backend.version, backend.reason = version, ""
        if backend.probed is False:
            logger.info("backend_up", backend=backend.name)
        backend.probed = True
        if time.monotonic() >= backend.cool_until:
            backend.failures = 0
        self._report_up(backend)
        return True

    def _take_inventory(self, backend: Backend, tags: TagsResponse, ps: PsResponse | None) -> None:
        backend.tags = tags.models
        backend.installed = {canonical_model_name(m.name or m.model): m.name or m.model for m in tags.models}
        if ps is not None:
            backend.loaded = {canonical_model_name(m.name or m.model) for m in ps.models}

    def _report_up(self, backend: Backend) -> None:
        if backend.report is not None:
            up = backend.state(time.monotonic()) in {"up", "unknown"}
            backend.report.up.set(1 if up else 0)

    def _refresh_soon(self, backend: Backend) -> None:
        """Refresh a backend's inventory in the background (after Minato changed it, or it failed); a
        single backend routes nothing, so its inventory waits for the next probe or list."""
        if self._single or (backend.refreshing is not None and not backend.refreshing.done()):
            return
        task = asyncio.get_running_loop().create_task(self._refresh(backend), name=f"minato-refresh-{backend.name}")
        backend.refreshing = task
        self._keep(task)

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references), then log a failure."""
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("pool_task_failed", task=task.get_name(), error=repr(task.exception()))

    # -- routing -------------------------------------------------------------------------------

    async def _candidates(self, model: str | None, preferred: str | None = None) -> list[Backend]:
        """The backends to try for a request, best first (see the module's description); ``preferred``
        names the backend the request's conversation last used."""
        if self._single:
            return self._backends
        await self._known()
        now = time.monotonic()
        key = canonical_model_name(model) if model else None
        ordered = self._route(key, preferred, now)
        if ordered:
            return ordered
        if key is not None and not self._anyone_has(key) and now - self._listed_at >= MIN_REFRESH_SECONDS:
            self._listed_at = now  # a model installed behind Minato's back, perhaps: look once more
            await self.probe()
            ordered = self._route(key, preferred, time.monotonic())
            if ordered:
                return ordered
        up = [backend for backend in self._backends if backend.available(time.monotonic())]
        if key is not None and self._anyone_has(key):
            holders = ", ".join(f"{b.name} ({b.state(now)})" for b in self._backends if key in b.installed)
            raise OllamaUnavailableError(f"no backend that has '{model}' is reachable now: {holders}")
        if up:
            return up[:1]  # no backend has the model: one says so in Ollama's own words
        raise OllamaUnavailableError(f"no Ollama backend is reachable: {self._states(now)}")

    def _route(self, key: str | None, preferred: str | None, now: float) -> list[Backend]:
        up = [backend for backend in self._backends if backend.available(now)]
        if key is None:
            return up  # in configured order: blobs and the create that uses them meet on one backend
        self._turn = (self._turn + 1) % len(self._backends)
        rotated = up[self._turn % len(up) :] + up[: self._turn % len(up)] if up else up
        parallel = self.settings.backend_parallel
        loaded: list[Backend] = []
        installed: list[Backend] = []
        full: list[Backend] = []
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
        ordered = loaded + installed + full
        if preferred is not None:
            first = next((backend for backend in ordered if backend.name == preferred), None)
            if first is not None:
                ordered.remove(first)
                ordered.insert(0, first)
        return ordered

    def _anyone_has(self, key: str) -> bool:
        return any(key in backend.installed for backend in self._backends)

    def _states(self, now: float) -> str:
        return ", ".join(
            f"{backend.name} {backend.state(now)}" + (f" ({backend.reason})" if backend.reason else "")
            for backend in self._backends
        )

    async def _preferred(self, affinity: str | None) -> str | None:
        if affinity is None or self.affinity is None or self._single:
            return None
        try:
            return await self.affinity.get(affinity)
        except MinatoError as exc:  # a preference, not a guarantee: route without it
            logger.warning("affinity_unavailable", detail=exc.detail)
            return None

    async def _remember(self, affinity: str | None, preferred: str | None, backend: Backend) -> None:
        """Note the conversation's backend when it changed (awaited: its next turn must find it)."""
        if affinity is None or self.affinity is None or self._single or preferred == backend.name:
            return
        try:
            await self.affinity.put(affinity, backend.name)
        except MinatoError as exc:  # a preference, not a guarantee
            logger.warning("affinity_unavailable", detail=exc.detail)

    def _named(self, backend: str) -> Backend:
        found = self._by_name.get(backend)
        if found is None:
            names = ", ".join(self._by_name)
            raise InvalidInputError.single("query", "backend", f"must be one of the backends: {names}")
        return found

    # -- calls ---------------------------------------------------------------------------------

    async def _attempt(
        self,
        candidates: list[Backend],
        call: Callable[[OllamaClient], Awaitable[T]],
        *,
        model: str | None = None,
        generation: bool = False,
        vet: Callable[[Backend, T, bool], Awaitable[T]] | None = None,
    ) -> tuple[Backend, T]:
        """Call the candidates in order until one answers; fail over only before anything was relayed.

        ``vet`` reads an answer that did not raise (a forwarded one, whose status is Ollama's) and
        raises what means "try the next one"; it is told whether the backend is the ``last``. A
        ``generation`` counts as in flight on its backend from now until the caller's :meth:`_finished`.
        """
        key = canonical_model_name(model) if model else ""
        for index, backend in enumerate(candidates):
            last = index == len(candidates) - 1
            if generation:
                self._started(backend, key)
            if backend.report is not None:
                backend.report.requests.inc()
            try:
                result = await call(backend.client)
                if vet is not None:
                    result = await vet(backend, result, last)
            except (*FAILOVER_ERRORS, ModelNotFoundError) as exc:
                if generation:
                    self._finished(backend, key)
                if not self._next_may_answer(backend, exc, model) or last:
                    raise
                if backend.report is not None:
                    backend.report.failovers.inc()
                logger.warning(
                    "backend_failover", backend=backend.name, to=candidates[index + 1].name, detail=exc.detail
                )
                continue
            except BaseException:
                if generation:
                    self._finished(backend, key)
                raise
            backend.failures = 0
            if generation and key and key not in backend.loaded:
                backend.loaded.add(key)  # it is loading now: draw the next requests for it here
                self._refresh_soon(backend)
            return backend, result
        raise OllamaUnavailableError("no Ollama backend is configured")  # candidates is never empty

    def _next_may_answer(self, backend: Backend, exc: MinatoError, model: str | None) -> bool:
        """Note what a failure before the first byte says of ``backend``; whether another may answer."""
        if not isinstance(exc, ModelNotFoundError):
            self._failed(backend, exc)
            return True
        if not model:
            return False
        backend.failures = 0  # it answered, so it is healthy: only its inventory was stale
        self._gone(backend, model)
        return True

    def _gone(self, backend: Backend, model: str) -> None:
        """Ollama said ``backend`` does not have ``model``: strike it from the inventory now, so that the
        next requests skip it, and refresh that inventory (what else changed behind Minato's back)."""
        key = canonical_model_name(model)
        if backend.installed.pop(key, None) is None:
            return  # it was not listed (no backend has the model): nothing stale to refresh
        backend.loaded.discard(key)
        backend.tags = [entry for entry in backend.tags if canonical_model_name(entry.name or entry.model) != key]
        backend.client.forget(model)
        logger.info("backend_model_gone", backend=backend.name, model=model)
        self._refresh_soon(backend)

    def _started(self, backend: Backend, key: str) -> None:
        backend.in_flight[key] += 1
        backend.running += 1
        if backend.report is not None:
            backend.report.in_flight.set(backend.running)

    def _finished(self, backend: Backend, key: str) -> None:
        backend.in_flight[key] -= 1
        if backend.in_flight[key] <= 0:
            del backend.in_flight[key]
        backend.running -= 1
        if backend.report is not None:
            backend.report.in_flight.set(backend.running)

    def _failed(self, backend: Backend, exc: MinatoError) -> None:
        backend.failures += 1
        if backend.failures >= self.settings.backend_failures and not self._single:
            backend.cool_until = time.monotonic() + self.settings.backend_cooldown
            backend.reason = exc.detail
            logger.warning(
                "backend_cooling_down",
                backend=backend.name,
                failures=backend.failures,
                seconds=self.settings.backend_cooldown,
                detail=exc.detail,
            )
            self._report_up(backend)
        if not self._single and self.settings.ollama_probe_interval:
            self._refresh_soon(backend)

    def _until_closed(self, backend: Backend, model: str, answer: RawResponse | ChunkStream) -> None:
        key = canonical_model_name(model)
        answer.backend = backend.name

        def finished() -> None:
            self._finished(backend, key)

        answer.on_close = finished

    # -- generation ----------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChatChunk:
        """A whole answer from the backend routing picks."""
        preferred = await self._preferred(affinity)
        candidates = await self._candidates(request.model, preferred)
        backend, chunk = await self._attempt(
            candidates, lambda client: client.chat(request), model=request.model, generation=True
        )
        self._finished(backend, canonical_model_name(request.model))
        await self._remember(affinity, preferred, backend)
        return msgspec.structs.replace(chunk, backend=backend.name)

    async def stream_chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChunkStream:
        """A primed stream from the backend routing picks; it counts as in flight there until closed."""
        preferred = await self._preferred(affinity)
        candidates = await self._candidates(request.model, preferred)
        backend, stream = await self._attempt(
            candidates, lambda client: client.stream_chat(request), model=request.model, generation=True
        )
        self._until_closed(backend, request.model, stream)
        try:
            await self._remember(affinity, preferred, backend)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    # -- one model -----------------------------------------------------------------------------

    async def _on_model(self, model: str, call: Callable[[OllamaClient], Awaitable[T]]) -> T:
        return (await self._attempt(await self._candidates(model), call, model=model))[1]

    async def show(self, model: str) -> ShowResponse:
        """A model's details, from a backend that has it."""
        return await self._on_model(model, lambda client: client.show(model))

    async def capabilities(self, model: str) -> frozenset[str]:
        """A model's capabilities (cached per backend)."""
        return (await self.facts(model)).capabilities

    async def facts(self, model: str) -> ModelFacts:
        """What Minato needs to know of a model (cached per backend)."""
        return await self._on_model(model, lambda client: client.facts(model))

    def forget(self, model: str) -> None:
        """Drop every backend's cached facts about a model."""
        for backend in self._backends:
            backend.client.forget(model)

    async def version(self) -> str:
        """The version of the first backend that answers."""
        return await self._on_model_less(lambda client: client.version())

    async def _on_model_less(self, call: Callable[[OllamaClient], Awaitable[T]]) -> T:
        return (await self._attempt(await self._candidates(None), call))[1]

    # -- the fleet -----------------------------------------------------------------------------

    async def _reachable(self) -> list[Backend]:
        if not self._single:
            await self._known()
        now = time.monotonic()
        up = [backend for backend in self._backends if backend.available(now)]
        if not up and not self._single:
            raise OllamaUnavailableError(f"no Ollama backend is reachable: {self._states(now)}")
        return up or self._backends

    async def _holders(self, model: str) -> list[Backend]:
        """The reachable backends having ``model`` (asking them again when none seems to); when none
        has it, one reachable backend, whose 404 is Ollama's own."""
        key = canonical_model_name(model)
        reachable = await self._reachable()
        if self._single:
            return reachable
        if not any(key in backend.installed for backend in reachable):
            await self.probe()
            reachable = await self._reachable()
        return [backend for backend in reachable if key in backend.installed] or reachable[:1]

    async def pull(self, model: str, backend: str | None = None) -> PullProgressStream:
        """Pull onto every reachable backend (or the named one); return once each found the manifest."""
        targets = [self._named(backend)] if backend is not None else await self._reachable()
        started = await asyncio.gather(*(target.client.pull(model) for target in targets), return_exceptions=True)
        streams = []
        failures: list[BaseException] = []
        for target, outcome in zip(targets, started, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(outcome)
                if isinstance(outcome, MinatoError):
                    logger.warning("pull_not_started", backend=target.name, model=model, detail=outcome.detail)
            else:
                outcome.backend = target.name
                streams.append(outcome)
            self._refresh_soon(target)
        if not streams:
            # Every backend refused: the registry's 404 if any said so, else the first failure.
            raise next((f for f in failures if isinstance(f, ModelNotFoundError)), failures[0])
        for failure in failures:
            if not isinstance(failure, MinatoError):
                for stream in streams:
                    await stream.aclose()
                raise failure
        self.forget(model)
        return FleetPull(streams, [(target, self._refresh_soon) for target in targets])

    async def load(
        self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any], backend: str | None = None
    ) -> str:
        """Load where routing would send the model's next request (or on the named backend)."""
        candidates = [self._named(backend)] if backend is not None else await self._candidates(model)
        chosen, _ = await self._attempt(candidates, lambda client: client.load(model, keep_alive, options), model=model)
        chosen.loaded.add(canonical_model_name(model))
        self._refresh_soon(chosen)
        return chosen.name

    async def unload(self, model: str) -> None:
        """Unload the model from every backend that has it."""
        targets = await self._holders(model)
        await self._everywhere(targets, lambda client: client.unload(model))
        for target in targets:
            target.loaded.discard(canonical_model_name(model))

    async def delete(self, model: str) -> None:
        """Delete the model from every backend that has it (a 404 when none has)."""
        targets = await self._holders(model)
        await self._everywhere(targets, lambda client: client.delete(model))
        for target in targets:
            target.installed.pop(canonical_model_name(model), None)

    async def _everywhere(
        self, targets: list[Backend], call: Callable[[OllamaClient], Coroutine[Any, Any, None]]
    ) -> None:
        outcomes = await asyncio.gather(*(call(target.client) for target in targets), return_exceptions=True)
        for target in targets:
            self._refresh_soon(target)
        failure = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
        if failure is not None:
            raise failure

    async def running(self) -> PsResponse:
        """Every backend's loaded models, each with its backend."""
        answers = await self._from_every(lambda client: client.running())
        models = [
            msgspec.structs.replace(model, backend=backend.name) for backend, ps in answers for model in ps.models
        ]
        for backend, ps in answers:
            backend.loaded = {canonical_model_name(m.name or m.model) for m in ps.models}
        return PsResponse(models=models)

    async def list_models(self) -> TagsResponse:
        """Every backend's installed models, each once."""
        answered = await self._from_every(lambda client: client.list_models())
        for backend, tags in answered:
            self._take_inventory(backend, tags, None)
        return TagsResponse(models=self._merged_tags([backend for backend, _ in answered]))

    def _merged_tags(self, backends: list[Backend]) -> list[TagModel]:
        """The installed models of ``backends`` (those that just answered), each once, as the first of
        them in configured order lists it."""
        seen: dict[str, TagModel] = {}
        for backend in backends:
            for entry in backend.tags:
                seen.setdefault(canonical_model_name(entry.name or entry.model), entry)
        return list(seen.values())

    async def _from_every(self, call: Callable[[OllamaClient], Awaitable[T]]) -> list[tuple[Backend, T]]:
        """Ask every reachable backend; the answers of those that answered (a failure when none did)."""
        targets = await self._reachable()
        outcomes = await asyncio.gather(*(call(target.client) for target in targets), return_exceptions=True)
        answers: list[tuple[Backend, T]] = []
        failures: list[BaseException] = []
        for target, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(outcome)
                if isinstance(outcome, MinatoError):
                    self._failed(target, outcome)
            else:
                answers.append((target, outcome))
        for failure in failures:
            if not isinstance(failure, MinatoError) or not answers:
                raise failure
        return answers

    # -- relaying --------------------------------------------------------------------------------

    async def forward(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        content_type: str | None = None,
        headers_within: float | None = None,
        whole_within: float | None = None,
        model: str | None = None,
        generation: bool = False,
        spread: Spread = Spread.ONE,
    ) -> RawResponse:
        """Relay a request to the backends ``spread`` names (see :class:`~minato.upstream.protocol.Spread`)."""

        def send(client: OllamaClient) -> Awaitable[RawResponse]:
            return client.forward(
                method,
                path,
                body,
                content_type=content_type,
                headers_within=headers_within,
                whole_within=whole_within,
            )

        if spread is Spread.ONE or self._single:
            candidates = await self._candidates(model)
            try:
                backend, answer = await self._attempt(
                    candidates, send, model=model, generation=generation and bool(model), vet=self._vet
                )
            except _MissingModelError as missing:  # the last holder's 404, as Ollama said it
                missing.answer.backend = missing.backend
                return missing.answer
            if generation and model:
                self._until_closed(backend, model, answer)
            else:
                answer.backend = backend.name
            return answer
        if spread is Spread.HOLDERS:
            return await self._forward_all(await self._holders(model or ""), send, streamed=False)
        if spread is Spread.EVERY:
            return await self._forward_all(await self._reachable(), send, streamed=True)
        return await self._merged_listing(send, spread)

    async def _forward_all(
        self, targets: list[Backend], send: Callable[[OllamaClient], Awaitable[RawResponse]], *, streamed: bool
    ) -> RawResponse:
        """Send to every target and answer for all of them: progress (NDJSON) merged line by line, each
        line naming its backend, a backend's refusal as its error line, and one success at the end once
        every backend succeeded; whole answers once every backend finished (closing one early would stop
        its work), the first failure's if any. ``streamed``: a pull, whose progress may be merged."""
        outcomes = await asyncio.gather(*(send(target.client) for target in targets), return_exceptions=True)
        for target in targets:
            self._refresh_soon(target)
        answers: list[tuple[Backend, RawResponse]] = []
        failure: BaseException | None = None
        for target, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                answers.append((target, outcome))
        if not answers:
            raise failure or OllamaUnavailableError("no Ollama backend answered")
        if streamed and any(answer.content_type.startswith(_NDJSON) for _, answer in answers):
            return _merged_progress(answers, self.settings)
        contents = await asyncio.gather(*(answer.read() for _, answer in answers))
        chosen = next(
            (index for index, (_, answer) in enumerate(answers) if answer.status >= 300), 0
        )  # a refusal, else the first backend's answer
        return _replayed(answers[chosen][1], contents[chosen], self.settings)

    async def _vet(self, backend: Backend, answer: RawResponse, last: bool) -> RawResponse:
        """Raise for a forwarded answer that means "try the next backend": Ollama's "server busy" 503, or
        its "model not found" 404 (read here: a few bytes, which the client gets unchanged if no other
        backend has the model)."""
        if answer.status == 503 and not last:
            await answer.aclose()
            raise OllamaBusyError(f"Ollama at {backend.client.base_url} is busy")
        if answer.status != 404 or not answer.content_type.startswith(_JSON_TYPE):
            return answer
        content = await answer.read()
        replay = _replayed(answer, content, self.settings)
        if says_model_missing(answer.status, content):
            raise _MissingModelError(backend.name, replay)
        return replay

    async def _merged_listing(
        self, send: Callable[[OllamaClient], Awaitable[RawResponse]], spread: Spread
    ) -> RawResponse:
        """Every backend's list in one document of the first's shape: ``/api/tags`` and ``/v1/models``
        each model once, ``/api/ps`` every loaded model with its ``backend``."""
        documents: list[tuple[Backend, dict[str, Any]]] = []
        first: RawResponse | None = None
        for backend, answer in await self._from_every(send):
            content = await answer.read()
            if answer.status != 200:
                first = first or _replayed(answer, content, self.settings)
                continue
            try:
                document = msgspec.json.decode(content)
            except msgspec.DecodeError:
                continue
            if isinstance(document, dict):
                documents.append((backend, document))
        if not documents:
            if first is not None:
                return first
            raise OllamaConnectionLostError("no backend answered with a model list")
        field = "data" if "data" in documents[0][1] else "models"
        merged: list[Any] = []
        seen: set[str] = set()
        for backend, document in documents:
            for entry in document.get(field) or []:
                if not isinstance(entry, dict):
                    continue
                if spread is Spread.LOADED:
                    merged.append({**entry, "backend": backend.name})
                    continue
                name = canonical_model_name(str(entry.get("model") or entry.get("name") or entry.get("id") or ""))
                if name not in seen:
                    seen.add(name)
                    merged.append(entry)
        content = msgspec.json.encode({**documents[0][1], field: merged})
        return RawResponse(
            httpx.Response(200, content=content, headers={"content-type": _JSON}), self.base_url, 1.0, None
        )


class _MissingModelError(ModelNotFoundError):
    """A forwarded answer that is Ollama's "model not found": the pool tries the next holder; after the
    last one, :meth:`OllamaPool.forward` answers with it (never rendered by Minato)."""

    def __init__(self, backend: str, answer: RawResponse) -> None:
        super().__init__(f"Ollama at {backend} does not have the model")
        self.backend = backend
        self.answer = answer


def _replayed(answer: RawResponse, content: bytes, settings: Settings) -> RawResponse:
    response = httpx.Response(answer.status, content=content, headers={"content-type": answer.content_type})
    replay = RawResponse(response, answer.ollama_url, settings.idle_timeout, None)
    replay.backend = answer.backend
    return replay


def _merged_progress(answers: list[tuple[Backend, RawResponse]], settings: Settings) -> RawResponse:
    """One NDJSON stream of several backends' progress: each line names its backend; each backend's
    success is held back, and one success ends the stream once all of them succeeded."""

    async def lines() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[tuple[Backend, bytes | None]] = asyncio.Queue()

        async def read(backend: Backend, answer: RawResponse) -> None:
            buffer = b""
            try:
                if answer.status >= 300:  # this backend refused (Ollama's error body): its error line
                    content = (await answer.read()).strip()
                    if not content.startswith(b"{"):
                        text = content.decode("utf-8", "replace")[:500] or f"Ollama answered {answer.status}"
                        content = msgspec.json.encode({"error": text})
                    await queue.put((backend, content))
                    return
                async for chunk in answer.chunks():
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    for line in complete:
                        if line.strip():
                            await queue.put((backend, line))
                if buffer.strip():
                    await queue.put((backend, buffer))
            except MinatoError as exc:
                await queue.put((backend, msgspec.json.encode({"error": exc.detail})))
            finally:
                await queue.put((backend, None))

        readers = [asyncio.create_task(read(backend, answer)) for backend, answer in answers]
        try:
            left, succeeded = len(readers), 0
            while left:
                backend, line = await queue.get()
                if line is None:
                    left -= 1
                    continue
                if _SUCCESS in line:
                    succeeded += 1
                    continue
                yield _with_backend(line, backend.name) + b"\n"
            if succeeded == len(answers):
                yield b'{"status":"success"}\n'
        finally:
            for reader in readers:
                await cancel_and_wait(reader)
            for _, answer in answers:
                await answer.aclose()

    # Closing the merged answer closes the generator, which stops every backend's stream.
    response = httpx.Response(200, stream=_GeneratedBody(lines()), headers={"content-type": _NDJSON})
    return RawResponse(response, ", ".join(b.client.base_url for b, _ in answers), settings.idle_timeout, None)


def _with_backend(line: bytes, name: str) -> bytes:
    if line.startswith(b"{") and line != b"{}":
        return b'{"backend":' + msgspec.json.encode(name) + b"," + line[1:]
    return line


class _GeneratedBody(httpx.AsyncByteStream):
    """An httpx body made by an async generator (a merged stream), closed with the response."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._source:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


class FleetPull:
    """A pull onto several backends: their progress lines merged, each naming its backend, and one
    success once all of them succeeded (the first failure raises, naming its backend)."""

    def __init__(self, streams: list[PullStream], refresh: list[tuple[Backend, Callable[[Backend], None]]]) -> None:
        self._streams = streams
        self._refresh = refresh

    async def progress(self) -> AsyncIterator[list[PullProgress]]:
        """Yield each backend's batches as they come (``backend`` set); one success line at the end."""
        if len(self._streams) == 1:
            stream = self._streams[0]
            async for batch in stream.progress():
                # The success line is the pull's as a whole, as with several backends.
                yield [
                    item if item.status == "success" else msgspec.structs.replace(item, backend=stream.backend)
                    for item in batch
                ]
            return
        queue: asyncio.Queue[tuple[str, list[PullProgress] | BaseException | None]] = asyncio.Queue()

        async def read(stream: PullStream) -> None:
            try:
                async for batch in stream.progress():
                    await queue.put((stream.backend, batch))
            except BaseException as exc:  # handed to the reader, which raises it
                await queue.put((stream.backend, exc))
            else:
                await queue.put((stream.backend, None))

        readers = [asyncio.create_task(read(stream)) for stream in self._streams]
        try:
            left = len(readers)
            while left:
                name, item = await queue.get()
                if item is None:
                    left -= 1
                elif isinstance(item, BaseException):
                    if isinstance(item, MinatoError):
                        item.detail = f"{name}: {item.detail}"
                    raise item
                else:
                    shown = [msgspec.structs.replace(p, backend=name) for p in item if p.status != "success"]
                    if shown:
                        yield shown
            yield [PullProgress(status="success")]
        finally:
            for reader in readers:
                await cancel_and_wait(reader)

    async def aclose(self) -> None:
        """Stop every backend's pull stream, and refresh what they have."""
        for stream in self._streams:
            with contextlib.suppress(MinatoError):
                await stream.aclose()
        for backend, refresh in self._refresh:
            refresh(backend)


__all__ = ["Backend", "FleetPull", "OllamaPool", "backend_name"]
