"""Probes: ``/health`` (the process answers) and ``/ready`` (Ollama and the shared state answer too), by
GET or HEAD.

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

from minato.errors import MinatoError
from minato.metrics import CONTENT_TYPE, Metrics
from minato.runtime import runtime_of
from minato.schemas import HealthReport, ReadinessReport, StateReport
from minato.security import PROBE, PUBLIC
from minato.state import StateHealth
from minato.upstream import Ollama
from minato.upstream.protocol import OllamaDependency

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
        "200 with Ollama's version when Ollama and the shared state (`state`: memory, sqlite or redis) "
        "answer; 503 with the reason otherwise."
    ),
    opt={PROBE: True},
    responses={
        503: ResponseSpec(
            data_container=ReadinessReport,
            description="Ollama or the shared state is not reachable; `reason` says why.",
            generate_examples=False,
        )
    },
)
async def ready(
    upstream: NamedDependency[OllamaDependency], request: Request[Any, Any, Any]
) -> Response[ReadinessReport]:
    """Report whether Ollama answers, with its version, and whether the shared state does."""
    report, status = await _readiness(upstream, runtime_of(request).state.health)
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
async def ready_head(upstream: NamedDependency[OllamaDependency], request: Request[Any, Any, Any]) -> Response[None]:
    """Answer like ``GET /ready`` without the body."""
    return _bodiless(*await _readiness(upstream, runtime_of(request).state.health))


async def _readiness(upstream: Ollama, health: StateHealth) -> tuple[ReadinessReport, int]:
    (version, ollama_problem), state_problem = await asyncio.gather(_ollama_version(upstream), health.ping())
    state = StateReport(
        name=health.name, status="up" if state_problem is None else "down", reason=state_problem or UNSET
    )
    problem = ollama_problem or state_problem
    report = ReadinessReport(
        status="unavailable" if problem else "ready",
        ollama_url=upstream.base_url,
        ollama_version=version or UNSET,
        reason=problem or UNSET,
        state=state,
    )
    return report, 503 if problem else 200


async def _ollama_version(upstream: Ollama) -> tuple[str | None, str | None]:
    """Ollama's version, or why there is none."""
    try:
        return await upstream.version(), None
    except MinatoError as exc:
        return None, exc.detail


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
        "second histograms; tokens generated; streams in flight; upstream errors by kind; Ollama reachability."
    ),
    media_type=CONTENT_TYPE,
    opt={PROBE: True},
)
async def metrics_endpoint(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    """Expose the metrics in Prometheus' text format."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
