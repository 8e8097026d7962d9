"""A tiny HTTP/1.1 server on loopback whose every byte a test writes itself, on the test's own loop.

For the engine's wire-level cases the stand-in cannot script: a body trickled piece by piece, a
connection dropped mid-body, a keep-alive connection closed while idle, a client that stops reading
(the server's send buffer fills: :attr:`Peer.write_paused`). Each accepted connection is a
:class:`Peer` with the requests it received, in order, and events for its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import pytest

from minato.settings import Settings
from minato.upstream.client import OllamaClient
from minato.upstream.engine.connections import Origin

#: A write buffer limit small enough that a client that stops reading fills it with a few writes.
SMALL_WRITE_BUFFER: Final = 16 * 1024


class Peer(asyncio.Protocol):
    """One connection the server accepted."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.requests: asyncio.Queue[bytes] = asyncio.Queue()
        self.ended = asyncio.Event()
        """The client closed the connection (or it broke)."""
        self.write_paused = asyncio.Event()
        """The server's send buffer passed its high-water mark: the client is not reading."""
        self.write_resumed = asyncio.Event()
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=SMALL_WRITE_BUFFER)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.requests.put_nowait(head + b"\r\n\r\n" + rest[:length])
            self._buffer = rest[length:]

    def eof_received(self) -> bool:
        self.ended.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()

    def pause_writing(self) -> None:
        self.write_paused.set()

    def resume_writing(self) -> None:
        self.write_resumed.set()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def chunk(self, data: bytes) -> None:
        """One chunk of a chunked body."""
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def last_chunk(self) -> None:
        self.transport.write(b"0\r\n\r\n")


class WireServer:
    """The server: :meth:`start` it, point the engine at :attr:`url`, take each :class:`Peer` as it connects."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.connected: asyncio.Queue[Peer] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self.url = ""

    @property
    def origin(self) -> Origin:
        return Origin.of(self.url)

    async def start(self) -> WireServer:
        self._server = await asyncio.get_running_loop().create_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def _accept(self) -> Peer:
        peer = Peer()
        self.peers.append(peer)
        self.connected.put_nowait(peer)
        return peer

    async def stop(self) -> None:
        for peer in self.peers:
            peer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


CHUNKED_HEAD: Final = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"


def answer(body: bytes, content_type: bytes = b"application/json") -> bytes:
    """A whole answer with a Content-Length."""
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (content_type, len(body), body)


# -- fixtures (found by name where a test module imports them) ---------------------------------


@pytest.fixture(name="server")
async def fx_server() -> AsyncIterator[WireServer]:
    """A :class:`WireServer` for one test."""
    server = await WireServer().start()
    yield server
    await server.stop()


@pytest.fixture(name="client")
async def fx_client(server: WireServer) -> AsyncIterator[OllamaClient]:
    """Minato's client of one backend, the test's :class:`WireServer`."""
    client = OllamaClient(Settings(ollama_url=server.url, session_store="memory://"))
    yield client
    await client.aclose()
