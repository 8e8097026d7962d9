"""The floor relay (bench/floor_relay.py) in front of the stand-in, both served on the test's loop.

What it answers must be what the stand-in said (text re-encoded, bytes passed through, whole answers),
a slow reader must make it stop reading Ollama (the stand-in's socket fills), and a client that leaves
must close Ollama's stream. Behaviour only: nothing here is timed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import msgspec
import pytest
from aiohttp import web
from bench.floor_relay import serve

from tests.support.standin.server import Config, StandIn

pytestmark = pytest.mark.anyio
DEADLINE_S = 30.0
POLL_S = 0.01
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@asynccontextmanager
async def served() -> AsyncIterator[tuple[StandIn, str, str]]:
    """The stand-in on a loopback port and the floor relay in front of it; yields both URLs."""
    standin = StandIn(Config())
    runner = web.ServerRunner(web.Server(standin.handle, handler_cancellation=True, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream_port = runner.addresses[0][1]
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    upstream = f"http://127.0.0.1:{upstream_port}"
    relay = asyncio.create_task(serve("127.0.0.1", 0, upstream, ready))
    try:
        yield standin, f"http://127.0.0.1:{await ready}", upstream
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await runner.cleanup()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(POLL_S)


def unsent(standin: StandIn) -> int:
    """The bytes the stand-in's streams' sockets could not send yet (``GET /_standin/streams``)."""
    return sum(live.report()["write_buffered"] for live in standin.live)


def contents(ndjson: bytes) -> str:
    return "".join(line.get("message", {}).get("content", "") for line in map(msgspec.json.decode, ndjson.splitlines()))


async def test_stream_route_writes_the_text_of_ollamas_lines() -> None:
    async with served() as (_, url, _), httpx.AsyncClient(base_url=url) as client:
        direct = (await client.post("/api/chat", json={"model": "standin/tokens:300", **CHAT})).content
        answer = await client.get("/stream/standin/tokens:300", params={"message": "hi"})
    assert answer.status_code == 200
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == contents(direct)
    assert len(answer.text.split()) >= 300


async def test_whole_route_answers_json_with_the_text() -> None:
    async with served() as (_, url, _), httpx.AsyncClient(base_url=url) as client:
        whole = (await client.get("/standin/tokens:20", params={"message": "hi"})).json()
        streamed = (await client.get("/stream/standin/tokens:20", params={"message": "hi"})).text
    assert whole["model"] == "standin/tokens:20"
    assert whole["response"] == streamed
    assert whole["eval_count"] == 20
    assert whole["done_reason"] == "stop"


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_posts_pass_ollamas_answer_through_streamed_and_whole(path: str) -> None:
    async with served() as (_, url, _), httpx.AsyncClient(base_url=url) as client:
        streamed = await client.post(path, json={"model": "standin/tokens:5", "stream": True, **CHAT})
        whole = await client.post(path, json={"model": "standin/tokens:5", "stream": False, **CHAT})
    assert streamed.status_code == whole.status_code == 200
    assert streamed.headers["transfer-encoding"] == "chunked"
    if path == "/api/chat":
        assert streamed.headers["content-type"] == "application/x-ndjson"
        assert contents(streamed.content) == whole.json()["message"]["content"] == "The sky is blue because"
    else:
        assert streamed.headers["content-type"] == "text/event-stream"
        assert streamed.text.rstrip().endswith("data: [DONE]")
        assert whole.json()["choices"][0]["message"]["content"] == "The sky is blue because"


async def test_ollamas_error_is_relayed_with_its_status() -> None:
    async with served() as (_, url, _), httpx.AsyncClient(base_url=url) as client:
        posted = await client.post("/api/chat", json={"model": "nope", **CHAT})
        asked = await client.get("/stream/nope", params={"message": "hi"})
    assert posted.status_code == asked.status_code == 404
    assert posted.json() == asked.json() == {"error": "model 'nope' not found"}


async def test_a_slow_reader_pauses_ollama_and_still_gets_every_token() -> None:
    tokens = 100_000  # about 10 MB: on loopback the kernel alone may buffer 5 MB of it
    async with served() as (standin, url, upstream):
        # Asked of the stand-in itself: a connection of the relay's pool that had carried 2 MB fast
        # would have let the kernel grow its receive buffer past what this stream sends.
        async with httpx.AsyncClient(base_url=upstream) as client:
            direct = await client.post("/api/chat", json={"model": f"standin/tokens:{tokens}", **CHAT})
        expected = contents(direct.content)
        port = int(url.rpartition(":")[2])
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            # Passed through: Ollama's bytes as they are (re-encoded text would be 20 times smaller).
            body = msgspec.json.encode({"model": f"standin/tokens:{tokens}", **CHAT})
            ask = f"POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            await loop.sock_sendall(sock, ask.encode() + body)
            # Nothing read yet: the relay must stop reading Ollama, whose send buffer then fills.
            await until(lambda: unsent(standin) > 0, "the stand-in's socket cannot send")
            assert all(live.sent < tokens for live in standin.live), "Ollama held back, not read to the end"
            received = bytearray()
            while chunk := await loop.sock_recv(sock, 1 << 16):
                received += chunk
    status, _, framed = bytes(received).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")
    text, at = bytearray(), 0
    while at < len(framed):  # the chunked frames, decoded
        line_end = framed.index(b"\r\n", at)
        length = int(framed[at:line_end], 16)
        text += framed[line_end + 2 : line_end + 2 + length]
        at = line_end + 2 + length + 2
    assert contents(bytes(text)) == expected
    assert not standin.live, "the stand-in's stream ended"


async def test_a_client_that_leaves_ends_ollamas_stream() -> None:
    async with served() as (standin, url, _):
        port = int(url.rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream/standin/paced:1000x20?message=hi HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(1)  # the first token has come through
        writer.close()
        await writer.wait_closed()
        await until(
            lambda: any(event["type"] == "stream_cancelled" for event in standin.events),
            "the stand-in saw its stream cancelled",
        )
