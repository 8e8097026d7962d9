"""Probes: ``GET /health`` (the process answers) and ``GET /ready`` (Ollama answers too)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from minato.errors import MinatoError
from minato.metrics import CONTENT_TYPE, Metrics
from minato.schemas import HealthReport, ReadinessReport
from minato.security import PROBE, PUBLIC
from minato.upstream import OllamaClient


@get("/health", operation_id="Health", summary="Liveness probe (no key needed)", tags=["health"], opt={PUBLIC: True})
async def health() -> HealthReport:
    """Answer as long as the process serves requests; never calls Ollama."""
    return HealthReport()


@get(
    "/ready",
    operation_id="Ready",
    summary="Readiness probe",
    description="200 with Ollama's version when Ollama answers; 503 with the reason otherwise.",
    opt={PROBE: True},
    responses={
        503: ResponseSpec(
            data_container=ReadinessReport,
            description="Ollama is not reachable; `reason` says why.",
            generate_examples=False,
        )
    },
    tags=["health"],
)
async def ready(upstream: NamedDependency[OllamaClient]) -> Response[ReadinessReport]:
    """Report whether Ollama answers, with its version."""
    try:
        version = await upstream.version()
    except MinatoError as exc:
        report = ReadinessReport(status="unavailable", ollama_url=upstream.base_url, reason=exc.detail)
        return Response(report, status_code=503)
    return Response(ReadinessReport(status="ready", ollama_url=upstream.base_url, ollama_version=version))


@get(
    "/metrics",
    operation_id="Metrics",
    summary="Prometheus metrics",
    description=(
        "Requests by route, model and status; request duration, time to first token and tokens per "
        "second histograms; tokens generated; streams in flight; upstream errors by kind; Ollama reachability."
    ),
    media_type=CONTENT_TYPE,
    tags=["health"],
    opt={PROBE: True},
)
async def metrics_endpoint(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    """Expose the metrics in Prometheus' text format."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
