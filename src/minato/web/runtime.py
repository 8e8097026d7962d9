"""The typed runtime: everything a request may use, built once when the app starts and torn down once.

One lifespan builds one frozen :class:`Runtime` with an :class:`~contextlib.AsyncExitStack`, so
every resource is closed exactly once, in the reverse order it was opened, whatever fails half-way.
Handlers name a field (``upstream``, ``sessions``, ...) and get it through one provider per field.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any, Final

from litestar import Litestar, Request
from litestar.di import Provide

from minato.core.admission import Admission
from minato.core.fetch import ImageFetcher
from minato.core.policy import Policy
from minato.core.sessions import SessionManager
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.homes import open_state
from minato.state.protocols import Affinity, Quota, RateLimiter, SharedState
from minato.upstream.ports import Catalog, Upstream
from minato.upstream.probe import OllamaProbe

#: Builds the interface to Ollama (the pool of backends, or a test's fake) from the settings, the
#: metrics it reports to, and where conversations' backend affinity is kept.
UpstreamFactory = Callable[[Settings, Metrics, Affinity | None], Upstream]


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a request may use. Built by :func:`started`; frozen: nothing swaps a part mid-flight."""

    settings: Settings
    policy: Policy
    """What each caller may do (every route and door asks it)."""
    metrics: Metrics
    admission: Admission
    state: SharedState
    """Where the state behind the guarantees lives (see :func:`minato.state.open_state`)."""
    limiter: RateLimiter
    quota: Quota
    upstream: Upstream
    catalog: Catalog
    sessions: SessionManager
    fetcher: ImageFetcher


class RuntimeSlot:
    """Where the app keeps its runtime while it runs; empty before start-up and after shutdown."""

    __slots__ = ("_runtime",)

    def __init__(self) -> None:
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        """The running app's runtime."""
        if self._runtime is None:
            raise RuntimeError("Minato's runtime is used before the app started or after it stopped")
        return self._runtime

    @asynccontextmanager
    async def holding(self, runtime: Runtime) -> AsyncIterator[None]:
        """Hold ``runtime`` for the duration of the block."""
        self._runtime = runtime
        try:
            yield
        finally:
            self._runtime = None

    def providers(self) -> dict[str, Provide]:
        """One dependency provider per runtime field, by the field's name; ``state`` is Litestar's own
        name for the app's state, so the shared state is reached through its parts' fields."""
        return {
            field.name: Provide(self._provider(field.name), sync_to_thread=False)
            for field in fields(Runtime)
            if field.name != "state"
        }

    def _provider(self, name: str) -> Callable[[], Any]:
        def provide() -> Any:
            return getattr(self.runtime, name)

        provide.__name__ = f"provide_{name}"
        return provide


@asynccontextmanager
async def started(
    settings: Settings,
    metrics: Metrics,
    admission: Admission,
    upstream_factory: UpstreamFactory,
    *,
    policy: Policy | None = None,
    limiter: RateLimiter | None = None,
    quota: Quota | None = None,
) -> AsyncIterator[Runtime]:
    """Open every resource of a runtime; close them in reverse order when the block ends.

    The rate limiter and the quota are the shared state's unless others are given (a test's).
    """
    async with AsyncExitStack() as stack:
        state = await stack.enter_async_context(open_state(settings, metrics))
        admission.concurrency = state.concurrency  # the keys' places are held where the other limits are
        upstream = upstream_factory(settings, metrics, state.affinity)
        stack.push_async_callback(upstream.aclose)
        metrics.model_label = upstream.label
        probe = OllamaProbe(metrics, upstream, settings.ollama_probe_interval)
        probe.start()
        stack.push_async_callback(probe.stop)
        sessions = SessionManager(state.store, state.turns, settings)
        await sessions.start()
        stack.push_async_callback(sessions.stop)
        fetcher = ImageFetcher(settings)
        stack.push_async_callback(fetcher.aclose)
        yield Runtime(
            settings=settings,
            policy=policy if policy is not None else Policy(settings),
            metrics=metrics,
            admission=admission,
            state=state,
            limiter=state.limiter if limiter is None else limiter,
            quota=state.quota if quota is None else quota,
            upstream=upstream,
            catalog=upstream,
            sessions=sessions,
            fetcher=fetcher,
        )


#: The collector's thresholds in a served process. CPython's default (700 net allocations) runs a
#: collection every few requests, and what a request holds for its millisecond then survives into
#: the older generations, which are walked again and again: 10-14 % of the CPU of a whole answer
#: (measured under load). At 5,000 most of a request's objects are gone by refcount before the
#: collector looks at them; a young collection then pauses for about a millisecond.
GC_THRESHOLDS: Final = (5_000, 20, 20)


def settle_garbage_collector() -> None:
    """Once started: keep the collector off the objects that live as long as the process, and make it
    look less often (see :data:`GC_THRESHOLDS`). Only for a served process: a test suite builds apps by
    the hundred, and frozen objects are never freed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    """The runtime, for code that runs before a handler's dependencies (``before_request`` hooks)."""
    slot: RuntimeSlot = request.app.state.runtime_slot
    return slot.runtime


def attach(app: Litestar, slot: RuntimeSlot) -> None:
    """Make ``slot`` reachable from requests of ``app`` (see :func:`runtime_of`)."""
    app.state.runtime_slot = slot
