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
from minato.errors import ClientDisconnectedError, MinatoError
from minato.observability.record import RequestRecord, record_of
from minato.upstream.ports import Forward, Spread
from minato.upstream.streams import RawResponse
from minato.web.auth import caller_of
from minato.web.disconnect import watch_of
from minato.web.doors.counts import counts_of, per_second
from minato.web.doors.watch import StreamWatch
from minato.web.lane import Lane
from minato.web.relaying import Relayed, RelayStream, relay_directly
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
    watch: StreamWatch
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


class _DoorRelay:
    """A door's stream on its way through, synchronous (the :class:`~minato.web.relaying.Transform` of
    both drivers): Ollama's bytes through the watch, and the last frames once they end."""

    __slots__ = ("_call", "_record", "_watch")

    #: A door relays Ollama's body to its end.
    over: Final = False

    def __init__(self, call: Relay, record: RequestRecord | None, watch: StreamWatch) -> None:
        self._call = call
        self._record = record
        self._watch = watch

    def feed(self, chunk: bytes) -> bytes:
        data = self._watch.feed(chunk)
        record = self._record
        if data and record is not None and record.first_token is None:
            record.mark_first_token()
        return data

    def last(self, failure: MinatoError | None) -> bytes:
        """What follows Ollama's last bytes: an unterminated frame a dropping watch held, and a frame its
        SDKs raise on when the stream broke (``failure``) or stopped before its dialect's end."""
        call, record, watch = self._call, self._record, self._watch
        if failure is not None:
            logger.warning("door_stream_failed", path=call.path, model=call.model, detail=failure.detail)
            if record is not None:
                record.upstream_error = type(failure).__name__
            return stream_error_frame(call.dialect, failure.detail)
        rest = watch.rest()
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
            return rest + stream_error_frame(call.dialect, "Ollama ended the stream before the answer was complete")
        return rest


def _streamed(
    answer: RawResponse, call: Relay, record: RequestRecord | None, slot: Slot | None, usage: Usage
) -> Response[Any]:
    watch = StreamWatch(call.dialect, call.strip_usage, generation=call.model is not None)
    close = _Ending(answer, slot, usage, record, watch).end
    door = _DoorRelay(call, record, watch)

    async def fallback() -> AsyncIterator[bytes]:
        try:
            try:
                async for chunk in answer.chunks():
                    data = door.feed(chunk)
                    if data:
                        yield data
            except MinatoError as exc:
                yield door.last(exc)
                return
            last = door.last(None)
            if last:
                yield last
        finally:
            await close()

    source = answer.source

    async def direct(lane: Lane) -> bytes:
        if source is None:  # pragma: no cover - only offered for an answer with a source
            raise RuntimeError("the answer has no source to relay from")
        try:
            relay = await relay_directly(lane, source, door)
            if relay.left:
                raise ClientDisconnectedError("client disconnected")
            return door.last(relay.failure)
        finally:
            await close()

    if record is not None:
        record.streaming = True
    return RelayStream(
        Relayed(fallback, direct if source is not None else None),
        status_code=answer.status,
        media_type=answer.content_type,
        headers=STREAM_HEADERS,
        background=BackgroundTask(close),
    )


__all__ = ["Relay", "relay"]
