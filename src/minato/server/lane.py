"""The server's side of :mod:`minato.web.lane`: a request cycle's direct write to the client's transport.

uvicorn's ``RequestResponseCycle.send`` is the only other writer of a response, so a chunk is framed
here exactly as it frames one (a chunked-encoding frame when the cycle chose chunked encoding, raw
bytes counted against a ``Content-Length`` otherwise, nothing for a ``HEAD``), and only while the
cycle is between its head and its end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from minato.web.lane import LaneListener


class CycleLane:
    """Implements :class:`minato.web.lane.Lane` for one uvicorn request cycle.

    The connection's protocol forwards its transport's flow-control and loss callbacks to
    :meth:`pause`, :meth:`resume` and :meth:`lost` of the lane of the cycle it is answering.
    """

    __slots__ = ("_cycle", "_flow", "_head", "_listener", "_lost", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport, flow: FlowControl) -> None:
        self._cycle = cycle
        self._transport = transport
        self._flow = flow
        self._head = cycle.scope["method"] == "HEAD"
        self._listener: LaneListener | None = None
        self._lost = False

    def write(self, chunk: bytes) -> None:
        cycle = self._cycle
        if self._lost or cycle.disconnected or not cycle.response_started or cycle.response_complete:
            return
        if self._head or not chunk:
            return
        if cycle.chunked_encoding:
            self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            return
        if len(chunk) > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        cycle.expected_content_length -= len(chunk)
        self._transport.write(chunk)

    @property
    def gone(self) -> bool:
        return self._lost or self._cycle.disconnected

    def listen(self, listener: LaneListener | None) -> None:
        self._listener = listener
        if listener is None:
            return
        if self.gone:
            listener.gone()
        elif self._flow.write_paused:
            listener.pause()

    # The protocol's side.

    def pause(self) -> None:
        """The transport's buffer passed its high-water mark."""
        if self._listener is not None:
            self._listener.pause()

    def resume(self) -> None:
        """The transport's buffer fell below its low-water mark."""
        if self._listener is not None:
            self._listener.resume()

    def lost(self) -> None:
        """The connection closed."""
        if self._lost:
            return
        self._lost = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.gone()

    def done(self) -> None:
        """The response is complete: nobody listens any longer."""
        self._listener = None


__all__ = ["CycleLane"]
