"""The backends of a pool and what each has: probing them, and keeping their inventories current.

A backend's inventory (installed and loaded models) is refreshed by every probe, and in the background
at once after anything Minato did to it (a pull, a load, a delete, a failure). Before the first routing
decision every backend is probed once (the periodic probe may be off, or not have run yet).

The same inventory says whether a name is a model at all (for the catch-all model route, and for
bounded metric labels: a request's name is only a label if Ollama has that model). An unknown name
refreshes the lists at most once per :data:`MIN_REFRESH_SECONDS`; a name still missing is asked of
``/api/show`` (a model can answer there without being listed), at most :data:`SHOW_LOOKUPS_PER_SECOND`
a second and then remembered for :data:`MISSING_SECONDS`, so a flood of invented names costs Ollama a
few calls a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec
import structlog
from msgspec import UNSET

from minato.errors import InvalidInputError, MinatoError, ModelNotFoundError, OllamaUnavailableError
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import PsResponse, TagModel, TagsResponse
from minato.tasks import Background, SingleFlight
from minato.upstream.client import OllamaClient
from minato.upstream.pool.backend import Backend, Breaker, Report, backend_name
from minato.upstream.ports import BackendStatus

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics
    from minato.settings import Settings
    from minato.upstream.engine.connections import Connections

logger = structlog.get_logger("minato.pool")
E = TypeVar("E")
T = TypeVar("T")
V = TypeVar("V")

#: A model no backend lists makes the pool ask every backend again, at most this often.
MIN_REFRESH_SECONDS: Final = 1.0
#: Lookups of unlisted names allowed per second; beyond them a name is taken as unknown.
SHOW_LOOKUPS_PER_SECOND: Final = 5
#: How long a name Ollama said it does not have is remembered as missing.
MISSING_SECONDS: Final = 5.0
#: Bound on the names remembered beside the lists (found by ``/api/show``, or missing).
MAX_REMEMBERED: Final = 4096


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

    def __init__(self, settings: Settings, metrics: Metrics | None, connections: Connections) -> None:
        self.settings = settings
        self.metrics = metrics
        self.single = len(settings.ollama_urls) == 1
        self.backends = [
            Backend(
                backend_name(url),
                OllamaClient(msgspec.structs.replace(settings, ollama_url=url), connections=connections),
                Breaker(settings.backend_failures, settings.backend_cooldown, trips=len(settings.ollama_urls) > 1),
            )
            for url in settings.ollama_urls
        ]
        self.by_name = {backend.name: backend for backend in self.backends}
        self.ready = False
        """Whether the first probe is over."""
        self.listed_at = -MIN_REFRESH_SECONDS
        """When an unknown model last made routing probe again."""
        self.names: dict[str, str] = {}
        """Every model some backend lists: canonical name -> the name the first of them lists."""
        self.shown: dict[str, str] = {}
        """Models ``/api/show`` knows though no list has them."""
        self.missing: dict[str, float] = {}
        """Names Ollama said it does not have, and when."""
        self.names_at: float | None = None
        """When every reachable backend's list was last taken (``None``: ask again before trusting it)."""
        self._lists: SingleFlight[None, bool] = SingleFlight("minato-list")
        self._shows: SingleFlight[str, bool | None] = SingleFlight("minato-show")
        self._lookups = (0.0, 0)  # start of the current second, lookups made in it
        self._first_probe: SingleFlight[None, None] = SingleFlight("minato-first-probe")
        self.background = Background("pool_task_failed")
        if metrics is not None:
            for backend in self.backends:
                backend.report = Report(metrics, backend.name)
                backend.report.in_flight.set(0)

    async def aclose(self) -> None:
        """Stop the pending probes and refreshes."""
        for flight in (self._first_probe, self._lists, self._shows):
            await flight.aclose()
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
        if inventory:
            self.names_at = time.monotonic()
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
        self._renamed()
        if ps is not None:
            self.take_loaded(backend, ps)

    def take_loaded(self, backend: Backend, ps: PsResponse) -> None:
        """Take what a backend just said it has loaded."""
        backend.loaded = {canonical_model_name(m.name or m.model) for m in ps.models}

    def _renamed(self) -> None:
        """Rebuild :attr:`names` after a backend's installed models changed (rarely: read per request)."""
        self.names = {key: name for backend in reversed(self.backends) for key, name in backend.installed.items()}

    def struck(self, backend: Backend, key: str) -> bool:
        """Strike model ``key`` (canonical) from what ``backend`` has; whether it was listed there."""
        if backend.installed.pop(key, None) is None:
            return False
        backend.loaded.discard(key)
        backend.tags = [entry for entry in backend.tags if canonical_model_name(tag_name(entry)) != key]
        self._renamed()
        return True

    def changed(self) -> None:
        """Minato changed what the backends have (a pull, a delete): the next unknown name asks them again."""
        self.names_at = None
        self.missing.clear()

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
        if not self.struck(backend, canonical_model_name(model)):
            return  # it was not listed (no backend has the model): nothing stale to refresh
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

    async def from_every(self, call: Callable[[OllamaClient], Awaitable[T]]) -> list[tuple[Backend, T]]:
        """Ask every reachable backend; the answers of those that answered (a failure when none did)."""
        targets = await self.reachable()
        outcomes = await asyncio.gather(*(call(target.client) for target in targets), return_exceptions=True)
        answers: list[tuple[Backend, T]] = []
        failures: list[BaseException] = []
        for target, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(outcome)
                if isinstance(outcome, MinatoError):
                    self.failed(target, outcome)
            else:
                answers.append((target, outcome))
        for failure in failures:
            if not isinstance(failure, MinatoError) or not answers:
                raise failure
        return answers

    async def list_all(self) -> TagsResponse:
        """Take every reachable backend's installed models; each model once."""
        answered = await self.from_every(lambda client: client.list_models())
        for backend, tags in answered:
            self.take(backend, tags, None)
        self.names_at = time.monotonic()
        return TagsResponse(models=self.merged_tags([backend for backend, _ in answered]))

    async def knows(self, model: str, facts: Callable[[str], Awaitable[object]]) -> bool | None:
        """Whether Ollama has ``model`` (``facts`` asks ``/api/show``); ``None`` when Ollama cannot be
        asked (so nobody can tell)."""
        key = canonical_model_name(model)
        if key in self.names or key in self.shown:
            return True
        names_at = self.names_at
        if names_at is None or time.monotonic() - names_at >= MIN_REFRESH_SECONDS:
            if not await self._lists.run(None, self._list):
                return None
            if key in self.names:
                return True
        now = time.monotonic()
        missing_since = self.missing.get(key)
        if missing_since is not None and now - missing_since < MISSING_SECONDS:
            return False
        if not self._shows.pending(key):  # many requests for one unlisted model share one lookup
            second, made = self._lookups
            if now - second >= 1.0:
                second, made = now, 0
            if made >= SHOW_LOOKUPS_PER_SECOND:
                return False  # a flood of invented names: no more lookups this second
            self._lookups = (second, made + 1)
        return await self._shows.run(key, lambda: self._look_up(model, key, now, facts))

    async def _list(self) -> bool:
        try:
            await self.list_all()
        except MinatoError as exc:
            logger.debug("model_list_unavailable", detail=exc.detail)
            return False
        return True

    async def _look_up(
        self, model: str, key: str, now: float, facts: Callable[[str], Awaitable[object]]
    ) -> bool | None:
        try:
            await facts(model)
        except ModelNotFoundError:
            _remember(self.missing, key, now)
            return False
        except MinatoError as exc:
            logger.debug("model_lookup_unavailable", detail=exc.detail)
            return None
        _remember(self.shown, key, model)
        return True

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


def _remember(memory: dict[str, V], key: str, value: V) -> None:
    if len(memory) >= MAX_REMEMBERED:
        memory.clear()  # bounded: forgetting costs a lookup, never correctness
    memory[key] = value
