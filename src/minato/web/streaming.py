"""Relaying a primed Ollama stream to the client as plain text, NDJSON or server-sent events.

Tokens are written the moment Ollama's bytes arrive: each received upstream chunk becomes one
write, whatever number of tokens it holds, from the upstream connection's data callback when the
server offers a lane (:mod:`minato.web.relaying`). Nothing is buffered, slept on or batched across reads.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import structlog
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from minato.core.answer import AnswerStream
from minato.core.schemas import GenerationStats, StreamDone, StreamError
from minato.errors import ClientDisconnectedError, MinatoError, StreamAbortedError
from minato.observability.record import RequestRecord
from minato.ollama.wire import ChatChunk
from minato.web.lane import Lane
from minato.web.relaying import Relayed, RelayStream, relay_directly

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


class ChatRelay:
    """The client's bytes for one answer: Minato's format of Ollama's batches, with the counting on the way.

    Synchronous, and used by both drivers (:mod:`minato.web.relaying`): the direct one feeds it
    Ollama's bytes from the data callback (:meth:`feed`) and ends with :meth:`finish`; the fallback
    awaits the answer's batches (:meth:`encode` each) and ends with :meth:`failed` if they raise.
    """

    __slots__ = ("_answer", "_encoder", "_held", "_record", "fmt", "over")

    def __init__(self, answer: AnswerStream, fmt: StreamFormat, record: RequestRecord | None) -> None:
        self._answer = answer
        self.fmt = fmt
        self._encoder = _encoder_for(fmt)
        self._record = record
        self._held = b""
        self.over = False
        """Whether the direct relay reads no further: the answer failed, or its end waits for :meth:`finish`."""

    def encode(self, batch: list[ChatChunk]) -> bytes:
        """The bytes of ``batch``, with the closing event when it completes the answer."""
        record = self._record
        data = self._encoder.tokens(batch)
        done = bool(batch) and batch[-1].done
        if record is not None:
            # One chunk per generated token until the last, which carries Ollama's own count.
            record.note_relayed(len(batch) - done)
            if data and record.first_token is None:
                record.mark_first_token()
        if done:
            final = _done(batch[-1], self.fmt, self._encoder, self._answer.model, record)
            if final:
                data += final
        return data

    def failed(self, exc: MinatoError) -> bytes:
        """The closing event of an answer that failed (a plain-text body is cut instead: it raises)."""
        fmt = self.fmt
        logger.warning("stream_failed", model=self._answer.model, format=fmt.name.lower(), detail=exc.detail)
        if self._record is not None:
            self._record.upstream_error = type(exc).__name__
        if fmt is StreamFormat.TEXT:
            raise StreamAbortedError(exc.detail) from exc
        return self._encoder.final(StreamError(error=exc.detail), "error")

    def feed(self, chunk: bytes) -> bytes:
        """The direct relay's bytes for ``chunk`` of Ollama's body (the relay's :class:`Transform`)."""
        return self._checked(self.encode(self._answer.feed(chunk)))

    def primed(self) -> bytes:
        """The direct relay's bytes for the batch priming read."""
        return self._checked(self.encode(self._answer.primed()))

    def _checked(self, data: bytes) -> bytes:
        answer = self._answer
        if answer.complete or answer.failure is not None:
            self.over = True
            if answer.commit_due:
                # The turn is committed before the last batch leaves (see AnswerStream): the request's
                # task commits it, then writes what is held here.
                self._held, data = data, b""
        return data

    async def finish(self, lane: Lane, ended: bool, failure: MinatoError | None) -> bytes:
        """What the direct relay writes last once Ollama's body stopped (``ended``: complete; else
        ``failure``, or the relay was over): the answer's end, its turn committed first, or its
        failure's event."""
        answer = self._answer
        last, self._held = self._held, b""
        if failure is not None and answer.failure is None and not answer.complete:
            answer.failure = failure
        elif ended and not self.over:
            last = self.encode(answer.ended())
        if answer.commit_due:
            await answer.commit()
        if answer.failure is None or answer.complete:
            return last
        if self.fmt is StreamFormat.TEXT:
            lane.write(last)  # what came before the failure still reaches the client, then the body is cut
        return last + self.failed(answer.failure)

    async def direct(self, lane: Lane) -> bytes:
        """Relay the answer from Ollama's data callback to ``lane``; the bytes that end the response."""
        source = self._answer.source
        if source is None:  # pragma: no cover - only offered for an answer with a source
            raise RuntimeError("the answer has no source to relay from")
        try:
            first = self.primed()
            if first:
                lane.write(first)
            if self.over:  # the primed batch was the whole answer (or it failed)
                source.close()
                return await self.finish(lane, False, None)
            relay = await relay_directly(lane, source, self)
            if relay.left:
                raise ClientDisconnectedError("client disconnected")
            return await self.finish(lane, relay.ended, relay.failure)
        finally:
            # However it ended (a cut plain-text body raises past the response's background task).
            await self._answer.close()

    async def fallback(self) -> AsyncIterator[bytes]:
        """The client's bytes as the answer's batches arrive, ending with stats or an error."""
        try:
            async for batch in self._answer.batches():
                data = self.encode(batch)
                if data:
                    yield data
        except MinatoError as exc:
            yield self.failed(exc)


def answer_response(answer: AnswerStream, accept: str | None, record: RequestRecord | None) -> Stream:
    """Relay a generation's primed answer in the format ``accept`` asks for.

    The answer's ``close`` runs as a background task even when the client disconnects while the relay
    is suspended in a write: it closes Ollama's stream there (so Ollama stops) and frees what it holds.
    """
    chat = ChatRelay(answer, StreamFormat.negotiate(accept), record)
    if record is not None:
        record.streaming = True
    return RelayStream(
        Relayed(chat.fallback, chat.direct if answer.source is not None else None),
        media_type=chat.fmt.value,
        headers=STREAM_HEADERS,
        background=BackgroundTask(answer.close),
    )
