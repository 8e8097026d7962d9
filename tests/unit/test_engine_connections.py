"""The engine's keep-alive connections, on a real loopback socket: reuse, the per-backend bound, a stale
connection replaced once, idle expiry, and the failures to connect in Minato's words."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from minato.errors import OllamaConnectionLostError, OllamaTimeoutError, OllamaUnavailableError
from minato.ollama.wire import ChatRequest, WireMessage
from minato.settings import Settings
from minato.upstream.client import OllamaClient
from minato.upstream.engine.connections import Connections, Origin
from minato.upstream.engine.exchange import Exchange
from tests.support.payloads import chat_done, chat_token, ndjson
from tests.support.waiting import settled
from tests.support.wire_server import Peer, WireServer, answer, fx_server  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio
REQUEST = b"POST /api/chat HTTP/1.1\r\nhost: ollama\r\ncontent-length: 2\r\n\r\n{}"


def send(connections: Connections, server: WireServer, headers_within: float = 10.0) -> asyncio.Task[Exchange]:
    return asyncio.create_task(
        connections.exchange(
            server.origin,
            REQUEST,
            ollama_url=server.url,
            headers_within=headers_within,
            late="Ollama did not start answering in time",
            idle_timeout=10.0,
        )
    )


async def answer_every_request(peer: Peer, body: bytes) -> None:
    while True:
        await peer.requests.get()
        peer.write(answer(body))


async def test_sequential_calls_share_one_keep_alive_connection(server: WireServer) -> None:
    connections = Connections(limit=4, connect_timeout=5.0)
    answering: list[asyncio.Task[None]] = []

    async def serve() -> None:
        while True:
            peer = await server.connected.get()
            answering.append(asyncio.create_task(answer_every_request(peer, b'{"version":"1"}')))

    serving = asyncio.create_task(serve())
    try:
        for _ in range(5):
            exchange = await send(connections, server)
            assert await exchange.read() == b'{"version":"1"}'
            exchange.close()
    finally:
        serving.cancel()
        for task in answering:
            task.cancel()
    assert len(server.peers) == 1
    connections.close()


async def test_whole_answers_through_the_client_reuse_one_connection(server: WireServer) -> None:
    body = ndjson(chat_token("Hello", "m"), chat_done("m"))

    async def serve() -> None:
        peer = await server.connected.get()
        await answer_every_request(peer, body)

    serving = asyncio.create_task(serve())
    client = OllamaClient(Settings(ollama_url=server.url, session_store="memory://"))
    question = ChatRequest(model="m", messages=[WireMessage(role="user", content="hi")], stream=False)
    try:
        for _ in range(3):
            chunk = await client.chat(question)
            assert chunk.message.content == "Hello"
            assert chunk.done
    finally:
        serving.cancel()
        await client.aclose()
    assert len(server.peers) == 1


async def test_the_request_carries_only_minatos_headers_in_one_write(server: WireServer) -> None:
    settings = Settings(ollama_url=server.url, session_store="memory://", ollama_headers={"Authorization": "Bearer t"})
    client = OllamaClient(settings)
    version = asyncio.create_task(client.version())
    peer = await server.connected.get()
    request = await peer.requests.get()
    peer.write(answer(b'{"version":"0.12.3"}'))
    assert await version == "0.12.3"
    await client.aclose()
    head = request.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"GET /api/version HTTP/1.1"
    assert sorted(line.split(b":")[0].lower() for line in head[1:]) == [b"accept", b"authorization", b"host"]


async def test_the_bound_per_backend_makes_the_next_request_wait_then_proceed(server: WireServer) -> None:
    connections = Connections(limit=1, connect_timeout=5.0)
    first = send(connections, server)
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")  # the body is still to come
    held = await first
    second = send(connections, server)
    host_pool = connections.host_pool(server.origin)
    await settled(lambda: len(host_pool.waiters) == 1, "the second request waits for a connection")
    assert not second.done()

    peer.write(b"{}")  # the first answer completes: its connection goes to the waiter
    assert await held.read() == b"{}"
    await peer.requests.get()
    peer.write(answer(b"[]"))
    assert await (await second).read() == b"[]"
    assert len(server.peers) == 1
    connections.close()


async def test_a_waiter_past_the_headers_deadline_is_told_so(server: WireServer) -> None:
    connections = Connections(limit=1, connect_timeout=5.0)
    first = send(connections, server)
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    held = await first

    with pytest.raises(OllamaTimeoutError, match="Ollama did not start answering in time"):
        await send(connections, server, headers_within=0.05)
    held.close()
    connections.close()


async def test_a_stale_keep_alive_connection_is_replaced_once(server: WireServer) -> None:
    connections = Connections(limit=4, connect_timeout=5.0)
    first = send(connections, server)
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(answer(b"{}"))
    assert await (await first).read() == b"{}"

    second = send(connections, server)
    await peer.requests.get()
    peer.transport.close()  # Ollama dropped the idle connection as the request went out: no byte answered
    fresh = await server.connected.get()
    await fresh.requests.get()
    fresh.write(answer(b'{"again":true}'))
    assert await (await second).read() == b'{"again":true}'
    assert len(server.peers) == 2
    connections.close()


async def test_a_fresh_connection_closed_before_answering_is_not_retried(server: WireServer) -> None:
    connections = Connections(limit=4, connect_timeout=5.0)
    pending = send(connections, server)
    peer = await server.connected.get()
    await peer.requests.get()
    peer.transport.close()

    with pytest.raises(OllamaConnectionLostError, match="closed the connection before answering"):
        await pending
    assert len(server.peers) == 1


async def test_idle_connections_expire(server: WireServer) -> None:
    connections = Connections(limit=4, connect_timeout=5.0, idle_expiry=0.05)
    pending = send(connections, server)
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(answer(b"{}"))
    await (await pending).read()

    await asyncio.wait_for(peer.ended.wait(), 10)  # the engine closed the idle connection
    host_pool = connections.host_pool(server.origin)
    await settled(lambda: host_pool.open == 0, "the expired connection's place is free")
    assert host_pool.idle == []


async def test_a_refused_connection_is_told_in_minatos_words(server: WireServer) -> None:
    url = server.url
    await server.stop()
    connections = Connections(limit=4, connect_timeout=5.0)
    with pytest.raises(OllamaUnavailableError) as caught:
        await connections.exchange(
            Origin.of(url), REQUEST, ollama_url=url, headers_within=5.0, late="late", idle_timeout=5.0
        )
    assert caught.value.detail == f"Ollama is unreachable at {url}: the connection was refused"
    assert connections.host_pool(Origin.of(url)).open == 0


def test_the_origin_of_a_backend_url() -> None:
    assert Origin.of("http://127.0.0.1:11434") == Origin("http", "127.0.0.1", 11434, "", "127.0.0.1:11434")
    assert Origin.of("https://ollama.example/base/") == Origin(
        "https", "ollama.example", 443, "/base", "ollama.example"
    )
    assert Origin.of("http://[::1]:8080") == Origin("http", "::1", 8080, "", "[::1]:8080")
    assert msgspec.json.encode(Origin.of("http://u:p@h:1")) == b'["http","h",1,"","h:1"]'
