"""Probes: ``/health`` (the process answers) and ``/ready`` (a backend answers too), by GET or HEAD.

HEAD answers with the status and headers GET would, without the body (probes that only look at
the status, such as load balancers, often send HEAD).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import msgspec
from litestar import Request, Response, get, head
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from msgspec import UNSET

from minato.core.schemas import HealthReport, ReadinessReport, StateReport
from minato.observability.metrics import CONTENT_TYPE, Metrics
from minato.state.protocols import StateHealth
from minato.upstream.ports import Status, StatusDependency
from minato.web.auth import METRICS, PROBE, PUBLIC, caller_of
from minato.web.runtime import runtime_of

#: The probes, under one tag.
_get, _head = partial(get, tags=["health"]), partial(head, tags=["health"])


@_get("/health", operation_id="Health", summary="Liveness probe (no key needed)", opt={PUBLIC: True})
async def health() -> HealthReport:
    """Answer as long as the process serves requests; never calls Ollama."""
    return HealthReport()


@_get(
    "/ready",
    operation_id="Ready",
    summary="Readiness probe",
    description=(
        "200 while at least one Ollama backend answers (with the first one's version) and the shared state "
        "answers; 503 with the reason otherwise. `backends` lists every backend with its state (`up`, "
        "`down`, `cooling`); `state` says where conversations and limits are kept and whether it answers."
    ),
    opt={PROBE: True},
    responses={
        503: ResponseSpec(
            data_container=ReadinessReport,
            description="No Ollama backend is reachable, or the shared state (Redis) is not; `reason` says why.",
            generate_examples=False,
        )
    },
)
async def ready(
    request: Request[Any, Any, Any], upstream: NamedDependency[StatusDependency]
) -> Response[ReadinessReport]:
    """Report whether Ollama answers, with its version, and whether the shared state does."""
    report, status = await _readiness_for(request, upstream)
    return Response(report, status_code=status)


@_head("/health", operation_id="HealthHead", summary="Liveness probe, status only", opt={PUBLIC: True})
async def health_head() -> Response[None]:
    """Answer like ``GET /health`` without the body."""
    return _bodiless(HealthReport(), 200)


@_head(
    "/ready",
    operation_id="ReadyHead",
    summary="Readiness probe, status only",
    description="200 when Ollama and the shared state answer, 503 otherwise; no body.",
    opt={PROBE: True},
)
async def ready_head(request: Request[Any, Any, Any], upstream: NamedDependency[StatusDependency]) -> Response[None]:
    """Answer like ``GET /ready`` without the body."""
    return _bodiless(*await _readiness_for(request, upstream))


async def _readiness_for(request: Request[Any, Any, Any], upstream: Status) -> tuple[ReadinessReport, int]:
    """The readiness report as this caller may see it (its backends' loaded models within its key's scope)."""
    runtime = runtime_of(request)
    report, status = await _readiness(upstream, runtime.state.health)
    viewer = runtime.policy.viewer(caller_of(request.scope))
    return msgspec.structs.replace(report, backends=runtime.policy.visible_backends(viewer, report.backends)), status


async def _readiness(upstream: Status, health: StateHealth) -> tuple[ReadinessReport, int]:
    # Asked now, not taken from the last probe: a load balancer acts on this answer.
    _, trouble = await asyncio.gather(upstream.probe(inventory=False), health.ping())
    backends = upstream.backends()
    state = StateReport(name=health.name, status="up" if trouble is None else "down", reason=trouble or UNSET)
    up = next((backend for backend in backends if backend.state == "up"), None)
    if up is None:
        reasons = "; ".join(f"{b.name}: {b.reason or b.state}" for b in backends)
        reason = backends[0].reason if len(backends) == 1 and backends[0].reason else reasons
        return ReadinessReport(
            status="unavailable",
            ollama_url=upstream.base_url,
            reason=reason or "no backend answers",
            backends=backends,
            state=state,
        ), 503
    if trouble is not None:  # requests that need it would be refused: take this replica out
        return ReadinessReport(
            status="unavailable",
            ollama_url=upstream.base_url,
            ollama_version=up.version,
            reason=trouble,
            backends=backends,
            state=state,
        ), 503
    return ReadinessReport(
        status="ready", ollama_url=upstream.base_url, ollama_version=up.version, backends=backends, state=state
    ), 200


def _bodiless(report: HealthReport | ReadinessReport, status: int) -> Response[None]:
    # Content-Length is the length GET's body would have, as HEAD requires.
    length = len(msgspec.json.encode(report))
    return Response(None, status_code=status, media_type="application/json", headers={"content-length": str(length)})


@_get(
    "/metrics",
    operation_id="Metrics",
    summary="Prometheus metrics",
    description=(
        "Requests by route, model and status; request duration, time to first token and tokens per "
        "second histograms; tokens generated; streams in flight; upstream errors by kind; Ollama reachability. "
        "Needs an admin key or a `MINATO_METRICS_KEYS` key (the series name every key), unless "
        "`MINATO_OPEN_PROBES` or no key is configured."
    ),
    media_type=CONTENT_TYPE,
    opt={PROBE: True, METRICS: True},
)
async def metrics_endpoint(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    """Expose the metrics in Prometheus' text format."""
    # As a header, not a media type: Litestar appends "; charset=utf-8" to a text/* media type, and
    # prometheus_client's already has one. Prometheus 3 refuses a parameter sent twice (Go's
    # mime.ParseMediaType) and fails the scrape; Litestar leaves a Content-Type header alone.
    return Response(metrics.exposition(), headers={"content-type": CONTENT_TYPE})
