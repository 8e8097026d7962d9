"""Trying the candidates routing picked, in order, until one answers.

A refused or broken connection, or Ollama's "server busy" 503, before anything was relayed makes the
pool try the next candidate at once, and counts against that backend's breaker. Ollama's "model not
found" before anything was relayed means the pool's inventory of that backend is stale (the model was
deleted behind Minato's back): it is struck from the inventory at once, the inventory is refreshed,
and the next holder is tried; the last holder's 404 reaches the client as Ollama said it. That backend
answered, so it is no failure for its breaker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import structlog

from minato.errors import (
    MinatoError,
    ModelNotFoundError,
    OllamaBusyError,
    OllamaConnectionLostError,
    OllamaUnavailableError,
)
from minato.ollama.names import canonical_model_name
from minato.upstream.failures import says_model_missing
from minato.upstream.streams import RawResponse

if TYPE_CHECKING:
    from minato.upstream.client import OllamaClient
    from minato.upstream.pool.backend import Backend
    from minato.upstream.pool.inventory import Inventory
    from minato.upstream.streams import ChunkStream

logger = structlog.get_logger("minato.pool")
T = TypeVar("T")

#: Failures before the first byte reached the client after which the next backend is tried: no
#: connection, Ollama's "server busy", or a connection lost (also mid-way through a whole answer, which
#: Minato reads as a stream and has sent nothing of yet).
FAILOVER_ERRORS: Final = (OllamaUnavailableError, OllamaBusyError, OllamaConnectionLostError)
_JSON_TYPE: Final = "application/json"


class MissingModelError(ModelNotFoundError):
    """A forwarded answer that is Ollama's "model not found": the pool tries the next holder; after the
    last one, the pool answers with it (never rendered by Minato)."""

    def __init__(self, backend: str, answer: RawResponse) -> None:
        super().__init__(f"Ollama at {backend} does not have the model")
        self.backend = backend
        self.answer = answer


async def attempt(
    inventory: Inventory,
    candidates: list[Backend],
    call: Callable[[OllamaClient], Awaitable[T]],
    *,
    model: str | None = None,
    generation: bool = False,
    vet: Callable[[Backend, T, bool], Awaitable[T]] | None = None,
) -> tuple[Backend, T]:
    """Call the candidates in order until one answers; fail over only before anything was relayed.

    ``vet`` reads an answer that did not raise (a forwarded one, whose status is Ollama's) and raises
    what means "try the next one"; it is told whether the backend is the ``last``. A ``generation``
    counts as in flight on its backend from now until the caller's :meth:`Backend.finished`.
    """
    key = canonical_model_name(model) if model else ""
    for index, backend in enumerate(candidates):
        last = index == len(candidates) - 1
        if generation:
            backend.started(key)
        if backend.report is not None:
            backend.report.requests.inc()
        try:
            result = await call(backend.client)
            if vet is not None:
                result = await vet(backend, result, last)
        except (*FAILOVER_ERRORS, ModelNotFoundError) as exc:
            if generation:
                backend.finished(key)
            if not _next_may_answer(inventory, backend, exc, model) or last:
                raise
            if backend.report is not None:
                backend.report.failovers.inc()
            logger.warning("backend_failover", backend=backend.name, to=candidates[index + 1].name, detail=exc.detail)
            continue
        except BaseException:
            if generation:
                backend.finished(key)
            raise
        backend.breaker.answered()
        if generation and key and key not in backend.loaded:
            backend.loaded.add(key)  # it is loading now: draw the next requests for it here
            inventory.refresh_soon(backend)
        return backend, result
    raise OllamaUnavailableError("no Ollama backend is configured")  # candidates is never empty


def _next_may_answer(inventory: Inventory, backend: Backend, exc: MinatoError, model: str | None) -> bool:
    """Note what a failure before the first byte says of ``backend``; whether another may answer."""
    if not isinstance(exc, ModelNotFoundError):
        inventory.failed(backend, exc)
        return True
    if not model:
        return False
    backend.breaker.answered()  # it answered, so it is healthy: only its inventory was stale
    inventory.gone(backend, model)
    return True


async def vet(backend: Backend, answer: RawResponse, last: bool) -> RawResponse:
    """Raise for a forwarded answer that means "try the next backend": Ollama's "server busy" 503, or its
    "model not found" 404 (read here: a few bytes, which the client gets unchanged if no other backend
    has the model)."""
    if answer.status == 503 and not last:
        await answer.aclose()
        raise OllamaBusyError(f"Ollama at {backend.client.base_url} is busy")
    if answer.status != 404 or not answer.content_type.startswith(_JSON_TYPE):
        return answer
    content = await answer.read()
    replay = replayed(answer, content)
    if says_model_missing(answer.status, content):
        raise MissingModelError(backend.name, replay)
    return replay


def replayed(answer: RawResponse, content: bytes) -> RawResponse:
    """An answer already read, to be relayed as it came."""
    replay = RawResponse.made(answer.status, answer.content_type, content, answer.ollama_url, answer.idle_timeout)
    replay.backend = answer.backend
    return replay


def until_closed(backend: Backend, model: str, answer: RawResponse | ChunkStream) -> None:
    """Count a generation as in flight on ``backend`` until its answer is closed."""
    key = canonical_model_name(model)
    answer.backend = backend.name

    def finished() -> None:
        backend.finished(key)

    answer.on_close = finished
