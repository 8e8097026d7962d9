"""Relaying a door's request to Ollama's route of the same name, and Ollama's answer back, as bytes.

The answer's status and content type are Ollama's, known before the first byte is written; a
stream is written chunk by chunk the moment each arrives, and a client that leaves closes the call
to Ollama at once. On the way through, Minato only reads: the token counts (for metrics and
quotas) and whether the stream ended the way its dialect ends. A stream that breaks, or that
Ollama just stops, gets a last frame its SDKs raise on, so a cut answer never looks complete.

A generation (chat, completion, embedding) holds one of Minato's generation slots for the whole
relay, like a generation of Minato's own API, and a whole answer is bounded by
``MINATO_REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import structlog
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask

from minato.auth.caller import ANONYMOUS
from minato.core.admission import Slot
from minato.core.generation import take_slot
from minato.core.usage import Usage
from minato.errors import MinatoError
from minato.observability.record import RequestRecord, record_of
from minato.upstream.ports import Forward, Spread
from minato.upstream.streams import RawResponse
from minato.web.auth import caller_of
from minato.web.disconnect import watch_of
from minato.web.doors.counts import counts_of, per_second
from minato.web.relaying import RelayStream
from minato.web.rendering import StreamDialect, stream_error_frame
from minato.web.runtime import Runtime
from minato.web.streaming import STREAM_HEADERS

logger = structlog.get_logger("minato.doors")

_STREAMED_TYPES: Final = ("application/x-ndjson", "text/event-stream")


class Relay(NamedTuple):
    """One forwarded request: where it goes and what Minato watches for on the way back."""

    method: str
    path: str
    body: bytes | None
    dialect: StreamDialect
    model: str | None = None
    """The model of a generation (takes a slot, labels metrics); ``None`` for other routes."""
    streamed: bool = False
    """Whether the client asked for a stream (bounds the wait for Ollama's first byte)."""
    strip_usage: bool = False
    """Minato asked Ollama for an OpenAI usage frame the client did not ask for: drop it."""
    route_by: str | None = None
    """The model a call that is no generation is about (a pool sends it to a backend having it)."""
    spread: Spread = Spread.ONE
    """Which backends of a pool it goes to."""


#: What marks a frame carrying one generated token, by dialect: such frames are counted as they pass, so
#: a stream the client leaves (or that breaks) is charged what it relayed; Ollama's own count, when the
#: stream ends with it, replaces theirs.
_TOKEN_FRAMES: Final = {
    StreamDialect.NDJSON: b'"done":false',
    StreamDialect.OPENAI: b'"finish_reason":null',
    StreamDialect.RESPONSES: b".delta\ndata:",
    StreamDialect.ANTHROPIC: b"event: content_block_delta",
}


class _Watch:
    """Reads a stream as it passes: its token counts, and whether it ended as its dialect ends."""

    __slots__ = (
        "_carry",
        "_dialect",
        "_marker",
        "_sep",
        "_strip",
        "ended",
        "eval_duration",
        "failure",
        "prompt",
        "relayed",
        "tokens",
    )

    def __init__(self, dialect: StreamDialect, strip_usage: bool, *, generation: bool = True) -> None:
        self._dialect = dialect
        self._sep = b"\n" if dialect is StreamDialect.NDJSON else b"\n\n"
        self._strip = strip_usage
        self._marker = _TOKEN_FRAMES[dialect] if generation else b""
        self._carry = b""
        self.ended = False
        self.failure = ""
        """The error frame Ollama ended the stream with (the stream then ends, as its dialect says a
        failure ends, and the client has the error, but it is Ollama's failure all the same)."""
        self.tokens = 0
        """Ollama's own count of the answer's tokens, once a frame carried it."""
        self.relayed = 0
        """Frames carrying a token that passed so far."""
        self.eval_duration = 0
        self.prompt: int | None = None
        """Ollama's count of the prompt's tokens, once a frame carried it."""

    @property
    def counted(self) -> int:
        """The tokens to charge: Ollama's count once known, else the token frames that passed."""
        return self.tokens or self.relayed

    def feed(self, chunk: bytes) -> bytes:
        """Look at ``chunk``; return the bytes to write (the chunk itself unless a frame is dropped)."""
        data = self._carry + chunk if self._carry else chunk
        end = data.rfind(self._sep)
        if end < 0:
            self._carry = data
            return b"" if self._strip else chunk
        cut = end + len(self._sep)
        self._carry = data[cut:]
        if self._marker:
            self.relayed += data.count(self._marker, 0, cut)
        self._look(data, cut)
        if not self._strip:
            return chunk
        return self._without_usage_frame(data[:cut])

    def rest(self) -> bytes:
        """What a dropping watch still holds when the stream ends (an unterminated last frame)."""
        rest, self._carry = self._carry, b""
        return rest if self._strip else b""

    def _look(self, data: bytes, end: int) -> None:
        # Whatever ends a stream is its last frame: only the last complete one is searched for it.
        last = max(data.rfind(self._sep, 0, end - len(self._sep)), 0)
        if self._dialect is StreamDialect.NDJSON:
            done = data.find(b'"done":true', last, end)
            if done >= 0:
                self.ended = True
                counts = counts_of(self._frame_at(data, done), self._dialect)
                if counts is not None:
                    self.tokens, self.eval_duration = counts.eval_count, counts.eval_duration
                    self.prompt = counts.prompt_eval_count
            elif self._ends(data, last, end):
                self.ended = True
                self._note_failure(data, last, end)
            return
        at = data.rfind(b'"usage":{', 0, end)
        if at >= 0:
            frame = self._frame_at(data, at)
            data_at = frame.find(b"data: ")
            counts = counts_of(frame[data_at + 6 :], self._dialect) if data_at >= 0 else None
            if counts is not None and counts.tokens():
                self.tokens = counts.tokens()
            if counts is not None and counts.prompt():
                self.prompt = counts.prompt()
        if self._ends(data, last, end):
            self.ended = True
            self._note_failure(data, last, end)

    def _note_failure(self, data: bytes, start: int, end: int) -> None:
        for marker in _FAILURES[self._dialect]:
            at = data.find(marker, start, end)
            if at >= 0:
                self.failure = self._frame_at(data, at)[:_FAILURE_LOGGED].decode("utf-8", "replace").strip()
                return

    def _ends(self, data: bytes, start: int, end: int) -> bool:
        return any(data.find(marker, start, end) >= 0 for marker in _TERMINATORS[self._dialect])

    def _frame_at(self, data: bytes, at: int) -> bytes:
        start = data.rfind(self._sep, 0, at)
        start = 0 if start < 0 else start + len(self._sep)
        stop = data.find(self._sep, at)
        return data[start : stop if stop >= 0 else len(data)]

    def _without_usage_frame(self, frames: bytes) -> bytes:
        """The frames without the usage Minato asked for: the usage-only frame dropped, and the
        ``usage`` member of every other frame cut out (``/v1/completions`` puts one in each chunk)."""
        if b'"usage"' not in frames:
            return frames
        kept = [
            _USAGE_MEMBER.sub(b"", frame)
            for frame in frames.split(self._sep)
            if not (b'"choices":[]' in frame and b'"usage"' in frame)
        ]
        return self._sep.join(kept)


#: A ``usage`` member and the comma joining it to its neighbour (its counts hold no nested object).
_USAGE_MEMBER: Final = re.compile(rb',"usage":\{[^{}]*\}|"usage":\{[^{}]*\},?')


#: The terminators of :data:`_TERMINATORS` that report a failure, and how much of such a frame is logged.
_FAILURES: Final = {
    StreamDialect.NDJSON: (b'{"error"',),
    StreamDialect.OPENAI: (b'data: {"error"',),
    StreamDialect.RESPONSES: (b"event: response.failed", b"event: error"),
    StreamDialect.ANTHROPIC: (b"event: error",),
}
_FAILURE_LOGGED: Final = 500

#: What the last frame of a complete stream (or one that reports its own failure) contains, by dialect.
_TERMINATORS: Final = {
    StreamDialect.NDJSON: (b'{"error"', b'"status":"success"'),  # besides the "done":true line
    StreamDialect.OPENAI: (b"data: [DONE]", b'data: {"error"'),
    StreamDialect.RESPONSES: (
        b"event: response.completed",
        b"event: response.failed",
        b"event: response.incomplete",
        b"event: error",
    ),
    StreamDialect.ANTHROPIC: (b"event: message_stop", b"event: error"),
}


async def relay(request: Request[Any, Any, Any], runtime: Runtime, call: Relay) -> Response[Any]:
    """Forward ``call`` to Ollama and answer with what Ollama answers."""
    scope = request.scope
    record = record_of(scope)
    if record is not None and call.model:
        record.model = call.model
    watch = watch_of(scope, request.receive)
    caller = caller_of(scope)
    usage = Usage(runtime.quota, runtime.state.usage, caller, record, call.model)
    slot = await take_slot(runtime.admission, call.model, watch, caller or ANONYMOUS, record) if call.model else None
    try:
        answer = await watch.until(_forward(runtime, call, record))
        if record is not None:
            record.backend = answer.backend
        if answer.status < 300:
            usage.began()
        if answer.content_type.startswith(_STREAMED_TYPES):
            return _streamed(answer, call, record, slot, usage)
        try:
            body = await watch.until(answer.read())
        finally:
            await answer.aclose()
        if record is not None and record.sent is not None:
            record.ollama_seconds = time.perf_counter() - record.sent
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    if slot is not None:
        slot.release()
    if call.model and answer.status < 300:
        _note_counts(record, body, call.dialect)
        await usage.charge()
    # Only the content type travels back: length, encoding and dates are Minato's server's to set.
    return Response(body, status_code=answer.status, media_type=answer.content_type or None)


def _note_counts(record: RequestRecord | None, body: bytes, dialect: StreamDialect) -> None:
    """Note Ollama's own counts of a whole answer on its record (what usage and the quota are charged)."""
    counts = counts_of(body, dialect) if record is not None else None
    if record is None or counts is None:
        return
    record.prompt_tokens = counts.prompt()
    if counts.tokens():
        record.note_answer(counts.tokens(), per_second(counts.eval_count, counts.eval_duration))


async def _forward(runtime: Runtime, call: Relay, record: RequestRecord | None) -> RawResponse:
    settings = runtime.settings
    # A whole answer's headers come only once it is complete: wait as long as a whole answer may take.
    wait = settings.first_token_timeout if call.streamed else settings.request_timeout
    request = Forward(
        call.method,
        call.path,
        call.body,
        content_type="application/json" if call.body else None,
        headers_within=wait,
        # A generation is bounded as on Minato's own routes; a pull or a blob upload may take longer.
        whole_within=settings.request_timeout if call.model else None,
    )
    if record is not None:
        record.sent = time.perf_counter()
    return await runtime.upstream.forward(
        request,
        model=call.model or call.route_by,
        generation=call.model is not None,
        spread=call.spread,
    )


@dataclass(slots=True, eq=False)
class _Ending:
    """How a relayed stream ends, once, whichever end comes first (its last chunk, or its response's
    background task when the client left mid-write): Ollama's answer closed (so Ollama stops at
    once), the slot released, the tokens the watch counted noted and charged."""

    answer: RawResponse
    slot: Slot | None
    usage: Usage
    record: RequestRecord | None
    watch: _Watch
    ended: bool = field(default=False, init=False)

    async def end(self) -> None:
        """End the stream (the first call only)."""
        if self.ended:
            return
        self.ended = True
        await self.answer.aclose()
        if self.slot is not None:
            self.slot.release()
        watch, record = self.watch, self.record
        if record is not None and watch.counted:
            record.note_answer(watch.counted, per_second(watch.tokens, watch.eval_duration))
        if record is not None and watch.prompt is not None:
            record.prompt_tokens = watch.prompt
        await self.usage.charge()


def _streamed(
    answer: RawResponse, call: Relay, record: RequestRecord | None, slot: Slot | None, usage: Usage
) -> Response[Any]:
    watch = _Watch(call.dialect, call.strip_usage, generation=call.model is not None)
    close = _Ending(answer, slot, usage, record, watch).end

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in answer.chunks():
                data = watch.feed(chunk)
                if data:
                    if record is not None and record.first_token is None:
                        record.mark_first_token()
                    yield data
            rest = watch.rest()
            if rest:
                yield rest
            if watch.failure:
                # Ollama told the client itself; a client such as Open WebUI may still show it as a
                # quietly cut answer, so the operator must see it too.
                logger.warning("door_stream_failed", path=call.path, model=call.model, detail=watch.failure)
                if record is not None:
                    record.upstream_error = "StreamError"
            elif not watch.ended:
                logger.warning("door_stream_cut", path=call.path, model=call.model)
                if record is not None:
                    record.upstream_error = "StreamCut"
                yield stream_error_frame(call.dialect, "Ollama ended the stream before the answer was complete")
        except MinatoError as exc:
            logger.warning("door_stream_failed", path=call.path, model=call.model, detail=exc.detail)
            if record is not None:
                record.upstream_error = type(exc).__name__
            yield stream_error_frame(call.dialect, exc.detail)
        finally:
            await close()

    if record is not None:
        record.streaming = True
    return RelayStream(
        body(),
        status_code=answer.status,
        media_type=answer.content_type,
        headers=STREAM_HEADERS,
        background=BackgroundTask(close),
    )


__all__ = ["Relay", "relay"]
