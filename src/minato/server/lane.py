"""The server's side of :mod:`minato.web.lane`: a request cycle's direct write to the client's transport.

uvicorn's ``RequestResponseCycle.send`` is the only other writer of a response, so a chunk is framed
here exactly as it frames one (a chunked-encoding frame when the cycle chose chunked encoding, raw
bytes counted against a ``Content-Length`` otherwise, nothing for a ``HEAD``), and only while the
cycle is between its head and its end.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from minato.web.lane import LaneListener


class CycleLane:
    """Implements :class:`minato.web.lane.Lane` for one uvicorn request cycle.

    The connection's protocol forwards its transport's flow-control and loss callbacks to
    :meth:`pause`, :meth:`resume` and :meth:`lost` of the lane of the cycle it is answering.
    """

    __slots__ = ("_cycle", "_flow", "_head", "_listener", "_lost", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: HeldHead, flow: FlowControl) -> None:
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


class HeldHead:
    """The transport a request cycle writes to: its first write (the response's head) is held until the
    next one, or until this turn of the event loop ends, and leaves with it.

    A whole answer's head and body are written by one task step, so they leave in one ``send`` (one
    segment, one wake-up of the client) instead of two; a stream's head leaves with its first token,
    which is ready when the head is sent. Nothing is held past the turn, so nothing waits. Every later
    write goes straight through.
    """

    __slots__ = ("_fresh", "_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._fresh = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Write ``data``: the first write is held (see the class), a later one takes it along."""
        if self._fresh:
            self._fresh = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self.transport.write(data)

    def flush(self) -> None:
        """Write what is held now."""
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        """Close the connection once what is held is written."""
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        """Whether the connection is closing."""
        return self.transport.is_closing()


__all__ = ["CycleLane", "HeldHead"]
