"""Relaying a primed Ollama stream to the client as plain text, NDJSON or server-sent events.

Tokens are written the moment Ollama's bytes arrive: each received upstream chunk becomes one
write, whatever number of tokens it holds. Nothing is buffered, slept on or batched across reads.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import msgspec
import structlog
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Scope, Send

from minato.core.generation import AnswerStream
from minato.core.schemas import GenerationStats, StreamDone, StreamError
from minato.errors import ClientDisconnectedError, MinatoError, StreamAbortedError
from minato.observability.record import RequestRecord, record_of
from minato.ollama.wire import ChatChunk
from minato.web.disconnect import watch_of
from minato.web.middleware import BODY_SEND_KEY

logger = structlog.get_logger("minato.stream")

_encode: Final = msgspec.json.Encoder().encode
#: Headers of every streamed response (answers and pull progress alike).
STREAM_HEADERS: Final = {
    # Reverse proxies (nginx) buffer responses unless told not to; caches must not keep a stream.
    "X-Accel-Buffering": "no",
    "Cache-Control": "no-cache",
}


class StreamFormat(enum.Enum):
    """What a stream looks like on the wire, chosen by the ``Accept`` header."""

    TEXT = "text/plain"  # Litestar appends "; charset=utf-8" to text/* types
    NDJSON = "application/x-ndjson"
    SSE = "text/event-stream"

    @classmethod
    def negotiate(cls, accept: str | None) -> StreamFormat:
        """Pick SSE or NDJSON when the client asks for it; plain text otherwise (the seed's format)."""
        if accept:
            if cls.SSE.value in accept:
                return cls.SSE
            if cls.NDJSON.value in accept:
                return cls.NDJSON
        return cls.TEXT


#: The ``id:`` of Minato's SSE events: ``<stream>-<n>`` for each event and ``<stream>-end`` for the last.
SSE_EVENT_ID: Final = re.compile(r"[0-9a-f]{16}-(?:[0-9]{1,10}|end)")


def is_minato_event_id(value: str | None) -> bool:
    """Whether ``value`` (a ``Last-Event-ID`` header) names an event of a Minato stream.

    A Minato stream is never resumable: either it ended (its ``done`` or ``error`` event was the
    last one), or it was cut off, which stopped Ollama. Either way a browser's ``EventSource`` that
    reconnects with it must get a 204, which stops it, rather than the whole answer generated again.
    """
    return value is not None and SSE_EVENT_ID.fullmatch(value.strip()) is not None


class _Encoder:
    """Turns batches of chunks into the bytes of one stream format."""

    __slots__ = ()

    def tokens(self, batch: list[ChatChunk]) -> bytes:
        """The bytes for a batch of chunks (empty if it carries no text)."""
        raise NotImplementedError

    def final(self, payload: msgspec.Struct, event: str) -> bytes:
        """The closing event (``done`` or ``error``) of a structured stream."""
        return _encode(payload) + b"\n"


class _TextEncoder(_Encoder):
    __slots__ = ()

    def tokens(self, batch: list[ChatChunk]) -> bytes:
        return "".join([chunk.message.content for chunk in batch]).encode()


class _NdjsonEncoder(_Encoder):
    __slots__ = ()

    def tokens(self, batch: list[ChatChunk]) -> bytes:
        lines = []
        for chunk in batch:
            if chunk.message.thinking:
                lines.append(b'{"thinking":%s}\n' % _encode(chunk.message.thinking))
            if chunk.message.content:
                lines.append(b'{"token":%s}\n' % _encode(chunk.message.content))
        return b"".join(lines)


class _SseEncoder(_Encoder):
    """Named SSE events, each with an ``id:`` so that a reconnecting ``EventSource`` can be told it is over."""

    __slots__ = ("_next", "_stream")

    def __init__(self) -> None:
        self._stream = secrets.token_hex(8).encode()
        self._next = 0

    def _event(self, name: bytes, data: bytes) -> bytes:
        self._next += 1
        return b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (self._stream, self._next, name, data)

    def tokens(self, batch: list[ChatChunk]) -> bytes:
        events = []
        for chunk in batch:
            if chunk.message.thinking:
                events.append(self._event(b"thinking", b'{"thinking":%s}' % _encode(chunk.message.thinking)))
            if chunk.message.content:
                events.append(self._event(b"token", b'{"token":%s}' % _encode(chunk.message.content)))
        return b"".join(events)

    def final(self, payload: msgspec.Struct, event: str) -> bytes:
        return b"id: %s-end\nevent: %s\ndata: %s\n\n" % (self._stream, event.encode(), _encode(payload))


def _encoder_for(fmt: StreamFormat) -> _Encoder:
    if fmt is StreamFormat.SSE:
        return _SseEncoder()
    if fmt is StreamFormat.NDJSON:
        return _NdjsonEncoder()
    return _TextEncoder()


def _done(last: ChatChunk, fmt: StreamFormat, encoder: _Encoder, model: str, record: RequestRecord | None) -> bytes:
    """Account for a completed answer; return the closing event of a structured stream (or nothing)."""
    stats = GenerationStats.from_chunk(last)
    if record is not None:
        record.note_answer(last.eval_count, stats.tokens_per_second)
        record.prompt_tokens = last.prompt_eval_count
    if fmt is StreamFormat.TEXT:
        return b""
    return encoder.final(StreamDone(model=model, done_reason=last.done_reason, stats=stats), "done")


async def relay(
    batches: AsyncIterator[list[ChatChunk]], fmt: StreamFormat, model: str, record: RequestRecord | None
) -> AsyncIterator[bytes]:
    """Yield the client's bytes for a stream of batches, ending with stats or an error."""
    encoder = _encoder_for(fmt)
    try:
        async for batch in batches:
            data = encoder.tokens(batch)
            if record is not None:
                # One chunk per generated token until the last, which carries Ollama's own count.
                record.note_relayed(len(batch) - (1 if batch and batch[-1].done else 0))
            if data:
                if record is not None and record.first_token is None:
                    record.mark_first_token()
                yield data
            if batch and batch[-1].done:
                final = _done(batch[-1], fmt, encoder, model, record)
                if final:
                    yield final
    except MinatoError as exc:
        logger.warning("stream_failed", model=model, format=fmt.name.lower(), detail=exc.detail)
        if record is not None:
            record.upstream_error = type(exc).__name__
        if fmt is StreamFormat.TEXT:
            raise StreamAbortedError(exc.detail) from exc
        yield encoder.final(StreamError(error=exc.detail), "error")


def stream_response(
    batches: AsyncIterator[list[ChatChunk]],
    fmt: StreamFormat,
    model: str,
    record: RequestRecord | None,
    close: Callable[[], Awaitable[None]],
) -> Stream:
    """Wrap a stream of batches in a chunked response.

    ``close`` runs as a background task even when the client disconnects while the relay is
    suspended in a write: the owner of the stream closes the upstream there (so Ollama stops) and
    frees what it holds.
    """
    if record is not None:
        record.streaming = True
    return RelayStream(
        relay(batches, fmt, model, record),
        media_type=fmt.value,
        headers=STREAM_HEADERS,
        background=BackgroundTask(close),
    )


def answer_response(answer: AnswerStream, accept: str | None, record: RequestRecord | None) -> Stream:
    """Relay a generation's primed answer in the format ``accept`` asks for."""
    fmt = StreamFormat.negotiate(accept)
    return stream_response(answer.batches(), fmt, answer.model, record, answer.close)


class _RelayASGIResponse(ASGIStreamingResponse):
    """Litestar's streaming response with the same semantics without a task of its own.

    Litestar runs the body and a disconnect listener in an anyio task group; spawning it cost about
    a seventh of Minato's CPU per streamed request (py-spy, docs/benchmarks.md). Here the request's
    task writes the body under the request's one watch (:mod:`minato.web.disconnect`), which
    cancels the write if the client leaves; a failure of the body propagates as before.
    """

    __slots__ = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.start_response(send=send)
        body_send: Send = scope.get("state", {}).get(BODY_SEND_KEY, send)
        try:
            await watch_of(scope, receive).until(self._stream(body_send))
        except ClientDisconnectedError:
            # The client left mid-stream: its request is logged and counted as such, not as a success.
            record = record_of(scope)
            if record is not None:
                record.client_gone = True
        await self.after_response()


class RelayStream(Stream):
    """A :class:`~litestar.response.Stream` served by :class:`_RelayASGIResponse`."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        # Same slots, one overridden method: re-classing avoids re-implementing Litestar's
        # header, cookie and media-type merging.
        response.__class__ = _RelayASGIResponse
        return response
