"""Relaying a primed Ollama stream to the client as plain text, NDJSON or server-sent events.

Tokens are written the moment Ollama's bytes arrive: each received upstream chunk becomes one
write, whatever number of tokens it holds. Nothing is buffered, slept on or batched across reads.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NamedTuple

import msgspec
import structlog
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from minato.backpressure import Slot
from minato.errors import MinatoError
from minato.log import RequestRecord, StreamAbortedError
from minato.schemas import GenerationStats, StreamDone, StreamError
from minato.sessions import Turn
from minato.upstream import ChunkStream
from minato.upstream.wire import ChatChunk

logger = structlog.get_logger("minato.stream")

_encode: Final = msgspec.json.Encoder().encode
_STREAM_HEADERS: Final = {
    # Reverse proxies (nginx) buffer responses unless told not to; caches must not keep tokens.
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
            if "text/event-stream" in accept:
                return cls.SSE
            if "application/x-ndjson" in accept:
                return cls.NDJSON
        return cls.TEXT


def _token_text(batch: list[ChatChunk]) -> bytes:
    return "".join([chunk.message.content for chunk in batch]).encode()


def _structured(thinking: bytes, token: bytes) -> Callable[[list[ChatChunk]], bytes]:
    """Encoder of one event per piece of thinking and per token, from two ``%s`` templates."""

    def encode(batch: list[ChatChunk]) -> bytes:
        events = []
        for chunk in batch:
            if chunk.message.thinking:
                events.append(thinking % _encode(chunk.message.thinking))
            if chunk.message.content:
                events.append(token % _encode(chunk.message.content))
        return b"".join(events)

    return encode


_TOKEN_ENCODERS: Final[dict[StreamFormat, Callable[[list[ChatChunk]], bytes]]] = {
    StreamFormat.TEXT: _token_text,
    StreamFormat.NDJSON: _structured(b'{"thinking":%s}\n', b'{"token":%s}\n'),
    StreamFormat.SSE: _structured(
        b'event: thinking\ndata: {"thinking":%s}\n\n', b'event: token\ndata: {"token":%s}\n\n'
    ),
}


class Exchange(NamedTuple):
    """A session turn riding on a stream: recorded only if the stream completes."""

    turn: Turn
    question: str
    images: list[str]


def _final_event(fmt: StreamFormat, payload: msgspec.Struct, event: str) -> bytes:
    if fmt is StreamFormat.SSE:
        return b"event: %s\ndata: %s\n\n" % (event.encode(), _encode(payload))
    return _encode(payload) + b"\n"


async def _finish(
    last: ChatChunk,
    fmt: StreamFormat,
    model: str,
    record: RequestRecord | None,
    exchange: Exchange | None,
    answer: list[str] | None,
) -> bytes:
    """Account for a completed answer; return the closing event of a structured stream (or nothing)."""
    stats = GenerationStats.from_chunk(last)
    if record is not None:
        record.note_answer(last.eval_count, stats.tokens_per_second)
    if exchange is not None and answer is not None:
        # After the last token: the disk write never holds up a token.
        await exchange.turn.commit(model, exchange.question, exchange.images, "".join(answer))
    if fmt is StreamFormat.TEXT:
        return b""
    return _final_event(fmt, StreamDone(model=model, done_reason=last.done_reason, stats=stats), "done")


async def relay(
    stream: ChunkStream,
    fmt: StreamFormat,
    model: str,
    record: RequestRecord | None,
    exchange: Exchange | None = None,
    slot: Slot | None = None,
) -> AsyncIterator[bytes]:
    """Yield the client's bytes for a primed chat stream, ending with stats or an error."""
    encode_tokens = _TOKEN_ENCODERS[fmt]
    answer: list[str] | None = [] if exchange is not None else None
    try:
        async for batch in stream.batches():
            data = encode_tokens(batch)
            if data:
                if record is not None and record.first_token is None:
                    record.mark_first_token()
                yield data
            if answer is not None:
                answer.extend([chunk.message.content for chunk in batch])
            last = batch[-1] if batch else None
            if last is not None and last.done:
                final = await _finish(last, fmt, model, record, exchange, answer)
                if final:
                    yield final
    except MinatoError as exc:
        logger.warning("stream_failed", model=model, format=fmt.name.lower(), detail=exc.detail)
        if record is not None:
            record.upstream_error = type(exc).__name__
        if fmt is StreamFormat.TEXT:
            raise StreamAbortedError(exc.detail) from exc
        yield _final_event(fmt, StreamError(error=exc.detail), "error")
    finally:
        await stream.aclose()
        if slot is not None:
            slot.release()
        if exchange is not None:
            exchange.turn.release()


def stream_response(
    stream: ChunkStream,
    fmt: StreamFormat,
    model: str,
    record: RequestRecord | None,
    exchange: Exchange | None = None,
    slot: Slot | None = None,
) -> Stream:
    """Wrap a primed stream in a chunked response.

    The background task runs even when the client disconnects while the relay is suspended in a
    write: it closes the upstream at once (so Ollama stops generating) and frees the generation
    slot and the session.
    """

    if record is not None:
        record.streaming = True

    async def clean_up() -> None:
        await stream.aclose()
        if slot is not None:
            slot.release()
        if exchange is not None:
            exchange.turn.release()

    return RelayStream(
        relay(stream, fmt, model, record, exchange, slot),
        media_type=fmt.value,
        headers=_STREAM_HEADERS,
        background=BackgroundTask(clean_up),
    )


class _RelayASGIResponse(ASGIStreamingResponse):
    """Litestar's streaming response with the same semantics on two plain asyncio tasks.

    Litestar runs the body and the disconnect listener in an anyio task group; spawning it cost
    about a seventh of Minato's CPU per streamed request (py-spy, docs/benchmarks.md). Here the
    body is written by one task while another waits for ``http.disconnect``; whichever ends
    first cancels the other, and a failure of the body propagates as before.
    """

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        writing = loop.create_task(self._stream(send))
        listening = loop.create_task(self._until_disconnect(receive))
        try:
            await asyncio.wait((writing, listening), return_when=asyncio.FIRST_COMPLETED)
        finally:
            listening.cancel()
            if not writing.done():
                writing.cancel()
                await asyncio.wait((writing,))  # let the relay unwind: it closes the upstream
        if not writing.cancelled():
            writing.result()  # re-raise a failed body (an aborted plain-text stream)

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


class RelayStream(Stream):
    """A :class:`~litestar.response.Stream` served by :class:`_RelayASGIResponse`."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        # Same slots, one overridden method: re-classing avoids re-implementing Litestar's
        # header, cookie and media-type merging.
        response.__class__ = _RelayASGIResponse
        return response
