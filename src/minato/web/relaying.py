"""The two drivers of a relayed body: from Ollama's data callback to the client's lane, or through ASGI.

A relay's work on Ollama's bytes is synchronous and written once (a :class:`Transform`: Minato's
re-encoding, a door's watch); the drivers only differ in who calls it. The direct one
(:func:`relay_directly`) is a :class:`~minato.upstream.sink.Sink` of Ollama's body and a listener of
the client's :mod:`lane <minato.web.lane>`: each chunk is transformed and written from the upstream
connection's data callback, the client's full buffer pauses Ollama's socket, the client's leaving
closes it, and the request's task awaits one future for the whole body. The fallback (no lane: an
in-process test client; or an answer Minato made itself, which has no socket) awaits each read and
sends each piece as an ASGI message, as a streaming response does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Scope, Send

from minato.errors import ClientDisconnectedError
from minato.observability.record import record_of
from minato.web.disconnect import watch_of
from minato.web.lane import Lane, lane_of
from minato.web.middleware import BODY_SEND_KEY

if TYPE_CHECKING:
    from minato.errors import MinatoError
    from minato.upstream.sink import Source


class Transform(Protocol):
    """A relay's synchronous work on Ollama's bytes, the same for both drivers."""

    @property
    def over(self) -> bool:
        """Whether the relay reads no further (Ollama failed, or the end is held for the request's task)."""

    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for ``chunk`` of Ollama's body (may be empty)."""


class LaneRelay:
    """Relays one body from its source's data callback to the client's lane; :attr:`finished` resolves
    once the body ended (:attr:`ended`), failed (:attr:`failure`), the transform is :attr:`~Transform.over`,
    or the client left (:attr:`left`)."""

    __slots__ = ("_lane", "_settled", "_source", "_transform", "ended", "failure", "finished", "left")

    def __init__(self, lane: Lane, source: Source, transform: Transform) -> None:
        self._lane = lane
        self._source = source
        self._transform = transform
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Settled apart from the future: a cancelled request cancels the future it awaits.
        self._settled = False
        self.ended = False
        self.failure: MinatoError | None = None
        self.left = False

    # The source's sink.

    def data(self, chunk: bytes) -> None:
        if self._settled:
            return
        transform = self._transform
        out = transform.feed(chunk)
        if out:
            self._lane.write(out)
        if transform.over:
            self._source.close()
            self._finish()

    def end(self) -> None:
        self.ended = True
        self._finish()

    def fail(self, error: MinatoError) -> None:
        self.failure = error
        self._finish()

    # The lane's listener: flow control both ways, and Ollama stopped the moment its client leaves.

    def pause(self) -> None:
        if not self._settled:
            self._source.pause()

    def resume(self) -> None:
        if not self._settled:
            self._source.resume()

    def gone(self) -> None:
        if self._settled:
            return
        self.left = True
        self._source.close()
        self._finish()

    def _finish(self) -> None:
        if self._settled:
            return
        self._settled = True
        self._lane.listen(None)
        if not self.finished.done():
            self.finished.set_result(None)


async def relay_directly(lane: Lane, source: Source, transform: Transform) -> LaneRelay:
    """Relay ``source`` through ``transform`` to ``lane`` until it ends; the relay says how it did.

    One await for the whole body. A cancelled request (the server shutting down) closes Ollama's body.
    """
    relay = LaneRelay(lane, source, transform)
    source.attach(relay)  # what already arrived is written inside this call
    if not relay.finished.done():
        lane.listen(relay)  # (a client already gone ends the relay here)
    try:
        await relay.finished
    except BaseException:
        relay.gone()  # the request was cancelled (the server shutting down): Ollama stops too
        raise
    return relay


#: A direct relay of a response's body: the bytes its last ASGI message carries, once it ended.
Direct = Callable[[Lane], Awaitable[bytes]]


class Relayed(AsyncIterable[bytes]):
    """A relayed response body with both its drivers: iterated, the fallback's pieces; :attr:`direct`
    (when Ollama's body has a source) writes them to the lane and returns the last bytes."""

    __slots__ = ("_fallback", "direct")

    def __init__(self, fallback: Callable[[], AsyncIterator[bytes]], direct: Direct | None) -> None:
        self._fallback = fallback
        self.direct = direct

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._fallback()


class _RelayASGIResponse(ASGIStreamingResponse):
    """Litestar's streaming response, without a task of its own and, given a lane, without an ASGI
    message per chunk.

    Litestar runs the body and a disconnect listener in an anyio task group; spawning it cost about
    a seventh of Minato's CPU per streamed request (py-spy, docs/benchmarks.md). Here the head goes
    out through ASGI (the request log's layer adds its headers and counts the stream), then either
    the direct relay writes the body to the lane and one ASGI message ends it, or the request's task
    sends each piece under the request's one watch (:mod:`minato.web.disconnect`), which cancels the
    write if the client leaves. A failure of the body propagates as before.
    """

    __slots__ = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.start_response(send=send)
        body_send: Send = scope.get("state", {}).get(BODY_SEND_KEY, send)
        body = self.iterator
        lane = lane_of(scope) if isinstance(body, Relayed) and body.direct is not None else None
        try:
            if lane is not None and isinstance(body, Relayed) and body.direct is not None:
                last = await body.direct(lane)
                await body_send({"type": "http.response.body", "body": last, "more_body": False})
            else:
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


__all__ = ["Direct", "LaneRelay", "RelayStream", "Relayed", "Transform", "relay_directly"]
