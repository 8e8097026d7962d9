"""One keep-alive connection to an Ollama backend: an :class:`asyncio.Protocol` carrying ONE HTTP/1.1
exchange at a time, Ollama's answer parsed by httptools (llhttp, in C) as it arrives.

The parser calls the current :class:`~minato.upstream.engine.exchange.Exchange` directly (it is the
parser's callback object), so a body chunk costs ``feed_data`` and one Python call before it reaches
its sink. Between exchanges the connection waits in its backend's idle list
(:mod:`minato.upstream.engine.connections`); bytes arriving then are not an answer to anything, and
close it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from minato.upstream.engine.connections import HostPool
    from minato.upstream.engine.exchange import Exchange


class Connection(asyncio.Protocol):
    """A connection to one backend (see the module's description)."""

    __slots__ = ("counted", "exchange", "host_pool", "idle_since", "loop", "parser", "reused", "transport")

    transport: asyncio.Transport
    parser: httptools.HttpResponseParser

    def __init__(self, host_pool: HostPool, loop: asyncio.AbstractEventLoop) -> None:
        self.host_pool = host_pool
        self.loop = loop
        self.exchange: Exchange | None = None
        self.reused = False
        """Whether the exchange in progress is not this connection's first."""
        self.idle_since = 0.0
        self.counted = False
        """Whether the connection holds one of its host pool's places (from a completed connect on)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream connection's transport is one

    def begin(self, exchange: Exchange, request: bytes) -> None:
        """Send ``request`` (in one write) and read its answer into ``exchange``."""
        self.exchange = exchange
        self.parser = httptools.HttpResponseParser(exchange)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nothing was asked: not an answer Minato can use
            self.transport.close()
            return
        exchange.received = True
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            exchange.broken(exc)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost tells the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.host_pool.lost(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.lost(exc)

    def finished(self, *, keep: bool) -> None:
        """The exchange in progress is over: back to the idle list when ``keep``, else closed."""
        self.exchange = None
        if keep and not self.transport.is_closing():
            self.host_pool.release(self)
        else:
            self.transport.close()
