"""The engine's exchanges on a real loopback socket: every kind of body, pulled and pushed to a sink,
its deadlines (one timer per exchange), flow control and closing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from minato.errors import MinatoError, OllamaConnectionLostError, OllamaTimeoutError
from minato.upstream.engine.connections import Connections
from minato.upstream.engine.exchange import PULL_HIGH_WATER, Exchange
from tests.support.wire_server import CHUNKED_HEAD, Peer, WireServer, answer, fx_server  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio
REQUEST = b"POST /api/chat HTTP/1.1\r\nhost: ollama\r\ncontent-length: 2\r\n\r\n{}"


class Recording:
    """A sink that notes every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | str]] = []
        self.arrived = asyncio.Event()
        self.over = asyncio.Event()

    def data(self, chunk: bytes) -> None:
        self.calls.append(("data", chunk))
        self.arrived.set()

    def end(self) -> None:
        self.calls.append(("end", b""))
        self.over.set()

    def fail(self, error: MinatoError) -> None:
        self.calls.append(("fail", error.detail))
        self.over.set()

    def body(self) -> bytes:
        return b"".join(chunk for kind, chunk in self.calls if kind == "data" and isinstance(chunk, bytes))

    async def next_data(self) -> None:
        await asyncio.wait_for(self.arrived.wait(), 10)
        self.arrived.clear()


@pytest.fixture(name="connections")
def fx_connections() -> Connections:
    return Connections(limit=4, connect_timeout=5.0)


async def opened(
    connections: Connections,
    server: WireServer,
    head: bytes = CHUNKED_HEAD,
    *,
    idle: float = 10.0,
    whole: float | None = None,
) -> tuple[Exchange, Peer]:
    """An exchange whose headers arrived (``head``), and the server's end of its connection."""
    pending = asyncio.create_task(
        connections.exchange(
            server.origin,
            REQUEST,
            ollama_url=server.url,
            headers_within=10.0,
            late="late",
            idle_timeout=idle,
            whole_within=whole,
        )
    )
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(head)
    return await pending, peer


# -- kinds of body ------------------------------------------------------------------------------


async def test_the_answer_to_a_head_ends_with_its_headers_whatever_length_they_announce(
    connections: Connections, server: WireServer
) -> None:
    # Ollama (Go's net/http) answers HEAD with the Content-Length a GET would have, and no body.
    pending = asyncio.create_task(
        connections.exchange(
            server.origin,
            b"HEAD /api/tags HTTP/1.1\r\nhost: ollama\r\n\r\n",
            ollama_url=server.url,
            headers_within=10.0,
            late="late",
            idle_timeout=10.0,
        )
    )
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n")
    exchange = await pending
    assert exchange.status == 200
    assert await exchange.read() == b""
    assert connections.host_pool(server.origin).idle, "the connection is kept for the next request"


async def test_a_chunked_body_is_read_piece_by_piece(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server)
    assert exchange.status == 200
    assert ("content-type", "application/x-ndjson") in exchange.headers
    peer.chunk(b'{"a":1}\n')
    assert await exchange.read_some() == b'{"a":1}\n'
    peer.chunk(b'{"b":2}\n')
    peer.last_chunk()
    assert await exchange.read() == b'{"b":2}\n'
    assert await exchange.read_some() == b""
    assert connections.host_pool(server.origin).idle  # complete: back in the pool


async def test_a_content_length_body(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server, b"HTTP/1.1 404 Not Found\r\ncontent-length: 11\r\n\r\n")
    peer.write(b"not ")
    peer.write(b"found")
    peer.write(b"!!")
    assert exchange.status == 404
    assert await exchange.read() == b"not found!!"


async def test_a_body_delimited_by_the_end_of_the_connection(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
    peer.write(b"until ")
    peer.write(b"the end")
    peer.transport.close()
    assert await exchange.read() == b"until the end"
    host_pool = connections.host_pool(server.origin)
    assert host_pool.idle == []  # a connection whose end was the body's is not reused


# -- pushed to a sink -----------------------------------------------------------------------------


async def test_attach_hands_on_what_arrived_then_each_piece_then_the_end(
    connections: Connections, server: WireServer
) -> None:
    exchange, peer = await opened(connections, server)
    peer.chunk(b"one\n")
    assert await exchange.read_some() == b"one\n"  # read before the relay took over (priming)
    peer.chunk(b"two\n")
    peer.chunk(b"three\n")
    # Both pieces arrived and wait unread in the exchange.
    await arrived(lambda: exchange._buffered == len(b"two\nthree\n"))
    sink = Recording()

    exchange.attach(sink)
    assert sink.calls == [("data", b"two\n"), ("data", b"three\n")]  # inside the attach call
    peer.chunk(b"four\n")
    await sink.next_data()
    assert sink.calls[-1] == ("data", b"four\n")
    peer.last_chunk()
    await asyncio.wait_for(sink.over.wait(), 10)
    assert sink.calls[-1] == ("end", b"")
    assert [kind for kind, _ in sink.calls].count("end") == 1


async def test_attach_after_the_end_ends_at_once(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server)
    peer.chunk(b"all\n")
    peer.last_chunk()
    await asyncio.wait_for(_complete(exchange), 10)
    sink = Recording()

    exchange.attach(sink)

    assert sink.calls == [("data", b"all\n"), ("end", b"")]


async def _complete(exchange: Exchange) -> None:
    await arrived(lambda: exchange._complete)  # the engine's own flag: the body is whole


async def arrived(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until bytes the server wrote have been received and ``condition`` holds."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the engine has no event for it; bounded by the timeout
            await asyncio.sleep(0.001)


async def test_a_connection_dropped_mid_body_fails_the_sink(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server)
    sink = Recording()
    exchange.attach(sink)
    peer.chunk(b"partial\n")
    await sink.next_data()

    peer.transport.abort()

    await asyncio.wait_for(sink.over.wait(), 10)
    assert sink.calls == [
        ("data", b"partial\n"),
        ("fail", f"the answer from Ollama at {server.url} broke off before it was complete"),
    ]


async def test_a_connection_dropped_mid_body_raises_from_read_some(
    connections: Connections, server: WireServer
) -> None:
    exchange, peer = await opened(connections, server)
    peer.chunk(b"partial\n")
    assert await exchange.read_some() == b"partial\n"
    peer.transport.close()

    with pytest.raises(OllamaConnectionLostError, match="broke off before it was complete"):
        await exchange.read_some()


# -- deadlines ------------------------------------------------------------------------------------


async def test_silence_past_the_idle_timeout_fails_the_sink_and_closes_the_connection(
    connections: Connections, server: WireServer
) -> None:
    exchange, peer = await opened(connections, server, idle=0.05)
    sink = Recording()
    exchange.attach(sink)

    await asyncio.wait_for(sink.over.wait(), 10)

    assert sink.calls == [("fail", "Ollama went silent for 0.05 s in the middle of an answer")]
    await asyncio.wait_for(peer.ended.wait(), 10)  # Ollama sees the connection go


async def test_silence_past_the_idle_timeout_raises_from_read_some(
    connections: Connections, server: WireServer
) -> None:
    exchange, _ = await opened(connections, server, idle=0.05)
    exchange.called = ("a stream", "the stream")

    with pytest.raises(OllamaTimeoutError, match=r"^Ollama went silent for 0.05 s in the middle of a stream$"):
        await exchange.read_some()


async def test_a_trickle_longer_than_the_whole_bound_fails(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server, idle=10.0, whole=0.2)
    sink = Recording()
    exchange.attach(sink)
    while not sink.over.is_set():  # a piece well within the idle timeout each time, never the end
        peer.chunk(b".")
        await asyncio.wait([asyncio.ensure_future(sink.over.wait())], timeout=0.01)

    assert sink.calls[-1] == ("fail", "the answer took longer than 0.2 s (MINATO_REQUEST_TIMEOUT)")
    await asyncio.wait_for(peer.ended.wait(), 10)


async def test_the_headers_within_their_deadline_or_minatos_sentence(
    connections: Connections, server: WireServer
) -> None:
    pending = asyncio.create_task(
        connections.exchange(
            server.origin,
            REQUEST,
            ollama_url=server.url,
            headers_within=0.05,
            late="Ollama did not start answering within 0.05 s",
            idle_timeout=10.0,
        )
    )
    peer = await server.connected.get()
    await peer.requests.get()  # asked, and never answered

    with pytest.raises(OllamaTimeoutError, match=r"^Ollama did not start answering within 0.05 s$"):
        await pending
    await asyncio.wait_for(peer.ended.wait(), 10)


async def test_paused_time_is_not_idle(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server, idle=0.05)
    sink = Recording()
    exchange.attach(sink)
    exchange.pause()
    fired = asyncio.Event()
    # Past several idle timeouts while paused (the exchange's timer fires and finds it paused).
    asyncio.get_running_loop().call_later(0.3, fired.set)
    await fired.wait()
    assert sink.calls == []
    exchange.resume()
    peer.chunk(b"still here\n")
    await sink.next_data()
    peer.last_chunk()
    await asyncio.wait_for(sink.over.wait(), 10)
    assert sink.calls == [("data", b"still here\n"), ("end", b"")]


# -- flow control and closing ---------------------------------------------------------------------


async def test_pause_fills_ollamas_send_buffer_and_resume_drains_it(
    connections: Connections, server: WireServer
) -> None:
    exchange, peer = await opened(connections, server)
    sink = Recording()
    exchange.attach(sink)
    exchange.pause()
    piece = b"x" * 65536
    while not peer.write_paused.is_set():  # the socket buffers fill, then the server's own buffer
        peer.chunk(piece)
        await asyncio.sleep(0)
    assert peer.transport.get_write_buffer_size() > 0
    received = len(sink.body())

    exchange.resume()

    await asyncio.wait_for(peer.write_resumed.wait(), 10)
    peer.last_chunk()
    await asyncio.wait_for(sink.over.wait(), 10)
    assert len(sink.body()) > received
    assert sink.calls[-1] == ("end", b"")


async def test_close_mid_body_closes_ollamas_connection(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server)
    sink = Recording()
    exchange.attach(sink)
    peer.chunk(b"a token\n")
    await sink.next_data()

    exchange.close()
    exchange.close()  # twice does nothing

    await asyncio.wait_for(peer.ended.wait(), 10)
    assert sink.calls == [("data", b"a token\n")]  # no sink call follows a close
    assert connections.host_pool(server.origin).idle == []


async def test_close_after_the_end_keeps_the_connection(connections: Connections, server: WireServer) -> None:
    exchange, peer = await opened(connections, server, answer(b"{}"))
    assert await exchange.read() == b"{}"
    exchange.close()
    assert len(connections.host_pool(server.origin).idle) == 1
    assert not peer.ended.is_set()


async def test_a_pulled_body_nobody_reads_stops_the_socket_being_read(
    connections: Connections, server: WireServer
) -> None:
    exchange, peer = await opened(connections, server)
    piece = b"y" * 65536
    while not peer.write_paused.is_set():  # nobody reads: the engine stops reading past its high water
        peer.chunk(piece)
        await asyncio.sleep(0)
    held = exchange._buffered
    assert held <= PULL_HIGH_WATER + 256 * 1024  # one socket read past the high water at most; the rest waits

    while not peer.write_resumed.is_set():  # reading resumes once the reader takes what is buffered
        assert await exchange.read_some()
    peer.last_chunk()
    while await exchange.read_some():
        pass
    assert exchange._complete
