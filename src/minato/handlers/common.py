"""What every handler shares: the documented error responses and cancelling work on disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

import msgspec
from litestar import Request
from litestar.openapi import ResponseSpec
from litestar.response import Stream
from msgspec import UNSET

from minato.backpressure import Admission, Slot
from minato.errors import MinatoError
from minato.log import RequestRecord, record_of
from minato.options import GenerationOptions
from minato.schemas import GenerateResponse, GenerationStats
from minato.security import caller_of
from minato.sessions import SessionManager, Turn
from minato.streaming import Exchange, StreamFormat, stream_response
from minato.upstream import OllamaClient

T = TypeVar("T")


class ErrorDetail(msgspec.Struct, frozen=True):
    """Body of every non-validation error."""

    detail: str


class ValidationItem(msgspec.Struct, frozen=True):
    """One invalid parameter."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationDetail(msgspec.Struct, frozen=True):
    """Body of a 422: which parameters were wrong, and why."""

    detail: list[ValidationItem]


def error_spec(description: str) -> ResponseSpec:
    """Document an error status answered with ``{"detail": "..."}``."""
    return ResponseSpec(data_container=ErrorDetail, description=description, generate_examples=False)


VALIDATION_RESPONSE: Final = ResponseSpec(
    data_container=ValidationDetail,
    description="A parameter is missing or invalid.",
    generate_examples=False,
)
UPSTREAM_RESPONSES: Final[dict[int, ResponseSpec]] = {
    401: error_spec("No valid API key (when keys are configured); see `WWW-Authenticate`."),
    422: VALIDATION_RESPONSE,
    429: error_spec("This key sent more requests per minute than allowed; see `Retry-After`."),
    502: error_spec("Ollama failed in another way; `detail` carries Ollama's message."),
    503: error_spec("Ollama is unreachable (the detail names its URL) or busy (with `Retry-After`)."),
    504: error_spec("Ollama did not answer in time."),
}
GENERATION_RESPONSES: Final[dict[int, ResponseSpec]] = {
    400: error_spec("Ollama refused the request (e.g. the model cannot chat)."),
    404: error_spec("Ollama has no such model."),
    **UPSTREAM_RESPONSES,
    503: error_spec(
        "Ollama is unreachable (the detail names its URL), Ollama is busy, or Minato's generation queue is "
        "full; busy answers carry `Retry-After`."
    ),
}
ADMIN_RESPONSES: Final[dict[int, ResponseSpec]] = {
    **GENERATION_RESPONSES,
    403: error_spec("The key is a user key; this route needs an admin key."),
}


class ClientDisconnectedError(MinatoError):
    """The client went away before its answer was ready (logged as nginx's 499)."""

    status_code = 499


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it the moment the client disconnects.

    The request body has been read by now, so the next ASGI message can only be the disconnect.
    Cancelling closes the call to Ollama, which stops generating instead of computing an answer
    nobody will read.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnectedError("client disconnected") from None
        raise
    finally:
        watcher.cancel()


def note_model(request: Request[Any, Any, Any], model: str) -> RequestRecord | None:
    """Put the model on the request's log line and return that line's record."""
    record = record_of(request.scope)
    if record is not None:
        record.model = model
    return record


async def _admit(
    request: Request[Any, Any, Any],
    sessions: SessionManager,
    admission: Admission,
    params: GenerationOptions,
    model: str,
) -> tuple[Turn | None, Slot]:
    """Take the session's turn, then a generation slot: waiting for a turn must not hold a slot.

    Either wait ends early if the client disconnects; on any failure nothing stays taken.
    """
    turn = None
    if params.session is not None:
        owner = caller_of(request).fingerprint  # a key only ever continues its own conversations
        turn = await unless_disconnected(request, sessions.begin(owner, params.session))
    try:
        slot = admission.try_acquire(model)  # the usual case, without a watcher task
        if slot is None:
            slot = await unless_disconnected(request, admission.acquire(model))
    except BaseException:
        if turn is not None:
            turn.release()
        raise
    return turn, slot


def _release(turn: Turn | None, slot: Slot) -> None:
    slot.release()
    if turn is not None:
        turn.release()


async def whole_answer(
    request: Request[Any, Any, Any],
    upstream: OllamaClient,
    sessions: SessionManager,
    admission: Admission,
    params: GenerationOptions,
    model: str,
    message: str,
    images: list[str] | None = None,
) -> GenerateResponse:
    """Ask Ollama for a whole (non-streamed) answer, record it in the session, shape it."""
    turn, slot = await _admit(request, sessions, admission, params, model)
    try:
        chat = params.chat_request(model, message, images, turn)
        chunk = await unless_disconnected(request, upstream.chat(chat))
        if turn is not None:
            await turn.commit(model, message, images or [], chunk.message.content)
    finally:
        _release(turn, slot)
    record = record_of(request.scope)
    stats = GenerationStats.from_chunk(chunk)
    if record is not None:
        record.note_answer(chunk.eval_count, stats.tokens_per_second)
    return GenerateResponse(
        response=chunk.message.content,
        model=chunk.model or model,
        done_reason=chunk.done_reason,
        stats=stats,
        thinking=chunk.message.thinking or UNSET,
    )


async def streamed_answer(
    request: Request[Any, Any, Any],
    upstream: OllamaClient,
    sessions: SessionManager,
    admission: Admission,
    params: GenerationOptions,
    model: str,
    message: str,
    images: list[str] | None = None,
) -> Stream:
    """Prime Ollama's stream (so its status is known), then relay it; the session records the
    exchange only if the stream completes. The generation slot is held until the stream ends."""
    fmt = StreamFormat.negotiate(request.headers.get("accept"))
    turn, slot = await _admit(request, sessions, admission, params, model)
    try:
        chat = params.chat_request(model, message, images, turn)
        stream = await unless_disconnected(request, upstream.stream_chat(chat))
    except BaseException:
        _release(turn, slot)
        raise
    exchange = Exchange(turn, message, images or []) if turn is not None else None
    return stream_response(stream, fmt, model, record_of(request.scope), exchange, slot)
