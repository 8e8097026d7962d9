"""The lane Minato's server offers each request: a body written to the client's socket without an ASGI
message, framed as the cycle frames it, and the socket's flow control and loss told to one listener.

Served by the real protocol on a loopback socket, read by a raw client (the framing is the point)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from minato.server.httpserver import BoundedHttpToolsProtocol
from minato.server.lane import HeldHead
from minato.web.lane import Lane, lane_of

pytestmark = pytest.mark.anyio
App = Callable[[Any, Any, Any], Awaitable[None]]
CHUNK = b"x" * 65_536


class Listener:
    """Hears the lane's events as events a test can wait on."""

    def __init__(self) -> None:
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.left = asyncio.Event()

    def pause(self) -> None:
        self.paused.set()

    def resume(self) -> None:
        self.resumed.set()

    def gone(self) -> None:
        self.left.set()


@asynccontextmanager
async def served(app: App) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to ``app`` served by Minato's protocol on loopback."""
    loop = asyncio.get_running_loop()
    config = Config(app=app, lifespan="off", log_config=None)
    state = ServerState()
    server = await loop.create_server(lambda: BoundedHttpToolsProtocol(config, state, {}, loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        server.close()
        await asyncio.wait_for(asyncio.gather(*state.tasks, return_exceptions=True), timeout=10)


def _lane(scope: Any) -> Lane:
    lane = lane_of(scope)
    assert lane is not None, "Minato's server offers every request a lane"
    return lane


async def _chunked_app(scope: Any, receive: Any, send: Any) -> None:
    lane = _lane(scope)
    lane.write(b"before the head")  # dropped: the head has not gone out
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    lane.write(b"hello")
    lane.write(b"")
    lane.write(b" lane")
    await send({"type": "http.response.body", "body": b"!", "more_body": False})
    lane.write(b"after the end")  # dropped: the response is complete


async def test_a_chunk_written_to_the_lane_is_a_chunked_frame_between_the_head_and_the_end() -> None:
    async with served(_chunked_app) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.1\r\nhost: minato\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head
    assert body == b"5\r\nhello\r\n5\r\n lane\r\n1\r\n!\r\n0\r\n\r\n"


async def test_the_connection_is_kept_alive_for_the_next_request_and_its_own_lane() -> None:
    async with served(_chunked_app) as (reader, writer):
        for _ in range(2):
            writer.write(b"GET /stream HTTP/1.1\r\nhost: minato\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            assert await reader.readuntil(b"0\r\n\r\n") == b"5\r\nhello\r\n5\r\n lane\r\n1\r\n!\r\n0\r\n\r\n"


async def test_a_head_request_gets_no_body_from_the_lane() -> None:
    async with served(_chunked_app) as (reader, writer):
        writer.write(b"HEAD /stream HTTP/1.1\r\nhost: minato\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"GET /stream HTTP/1.1\r\nhost: minato\r\n\r\n")
        after = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert after.startswith(b"HTTP/1.1 200 "), "nothing of the HEAD's body came before the next head"


async def test_a_response_with_a_length_gets_the_raw_bytes_counted_against_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        lane = _lane(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        lane.write(b"hello")
        with pytest.raises(RuntimeError, match="longer than Content-Length"):
            lane.write(b"too long!")
        lane.write(b"world")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with served(app) as (reader, writer):
        writer.write(b"GET /whole HTTP/1.0\r\nhost: minato\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()  # HTTP/1.0: the connection closes after the body
    assert b"content-length: 10" in head
    assert body == b"helloworld"


async def test_a_reader_that_stops_pauses_the_listener_and_reading_again_resumes_it() -> None:
    listener = Listener()
    written = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal written
        lane = _lane(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        lane.listen(listener)
        # The client reads nothing yet: the socket's buffers fill and the transport passes its high-water
        # mark, which the lane tells at once (bounded: loopback buffers hold a few megabytes at most).
        while not listener.paused.is_set() and written < 4096:
            lane.write(CHUNK)
            written += 1
        assert listener.paused.is_set()
        await listener.resumed.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with served(app) as (reader, writer):
        writer.write(b"GET /slow HTTP/1.1\r\nhost: minato\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await listener.paused.wait()
        frame = b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK)
        body = await reader.readexactly(written * len(frame) + 5)
    assert listener.resumed.is_set()
    assert body == frame * written + b"0\r\n\r\n"


async def test_a_client_that_leaves_is_told_to_the_listener_and_later_writes_are_dropped() -> None:
    listener = Listener()
    head_sent = asyncio.Event()
    lane_gone: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lane = _lane(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        lane.listen(listener)
        lane_gone.append(lane.gone)
        head_sent.set()
        await listener.left.wait()
        lane_gone.append(lane.gone)
        lane.write(b"nobody reads this")
        late = Listener()
        lane.listen(late)  # a listener that comes after the client left hears it at once
        assert late.left.is_set()

    async with served(app) as (reader, writer):
        writer.write(b"GET /left HTTP/1.1\r\nhost: minato\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await head_sent.wait()
        writer.close()
        await listener.left.wait()
    assert lane_gone == [False, True]


class RecordingTransport:
    """What a cycle's transport was asked to write, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _held(transport: RecordingTransport) -> HeldHead:
    return HeldHead(transport, asyncio.get_running_loop())  # type: ignore[arg-type]  # the three methods a cycle calls


async def test_a_whole_answers_head_leaves_with_its_body_in_one_write() -> None:
    transport = RecordingTransport()
    held = _held(transport)
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == [], "the head waits for the body"
    held.write(b"{}")
    held.write(b"more")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"more"]


async def test_a_head_without_a_body_in_the_same_turn_leaves_at_the_end_of_the_turn() -> None:
    transport = RecordingTransport()
    held = _held(transport)
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0)  # one turn of the event loop: the held head is flushed at its end
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
    held.write(b"token")
    assert transport.writes[-1] == b"token"


async def test_closing_writes_the_held_head_first() -> None:
    transport = RecordingTransport()
    held = _held(transport)
    held.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    held.close()
    assert transport.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"]
    assert transport.closed
    assert held.is_closing()
    held.flush()  # what the end of the turn does: nothing is left to write
    assert len(transport.writes) == 1
