"""What the client hands the web relays over the engine: a primed stream's first batch, its line reader
holding the bytes past its last complete line, and the rest of its body as a Source; a forwarded
answer's Source; closing once (``on_close`` once, Ollama's connection closed mid-body)."""

from __future__ import annotations

import asyncio

import pytest

from minato.errors import MinatoError
from minato.ollama.wire import ChatRequest, WireMessage
from minato.upstream.client import OllamaClient
from minato.upstream.ports import Forward
from minato.upstream.streams import RawResponse
from tests.support.payloads import chat_done, chat_token, ndjson
from tests.support.wire_server import CHUNKED_HEAD, WireServer, fx_client, fx_server  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio


class Collecting:
    """A sink that keeps the body and how it ended."""

    def __init__(self) -> None:
        self.body = b""
        self.ending: str | None = None
        self.over = asyncio.Event()

    def data(self, chunk: bytes) -> None:
        self.body += chunk

    def end(self) -> None:
        self.ending = "end"
        self.over.set()

    def fail(self, error: MinatoError) -> None:
        self.ending = error.detail
        self.over.set()


def hello() -> ChatRequest:
    return ChatRequest(model="m", messages=[WireMessage(role="user", content="hi")], stream=True)


async def test_a_primed_stream_hands_on_its_first_batch_the_rest_of_a_line_and_its_source(
    server: WireServer, client: OllamaClient
) -> None:
    opening = asyncio.create_task(client.stream_chat(hello()))
    peer = await server.connected.get()
    await peer.requests.get()
    first, second, done = ndjson(chat_token("Hel", "m")), ndjson(chat_token("lo", "m")), ndjson(chat_done("m"))
    peer.write(CHUNKED_HEAD)
    peer.chunk(first + second[:10])  # a complete line, and the start of the next
    stream = await opening
    closed: list[str] = []
    stream.on_close = lambda: closed.append("closed")

    assert [chunk.message.content for chunk in stream.first] == ["Hel"]
    source = stream.source
    assert source is not None
    sink = Collecting()
    source.attach(sink)
    peer.chunk(second[10:] + done)
    peer.last_chunk()
    await asyncio.wait_for(sink.over.wait(), 10)

    assert sink.body == second[10:] + done
    assert sink.ending == "end"
    # The stream's reader kept the start of the line priming read past: the relay's bytes complete it.
    assert [chunk.message.content for chunk in stream.lines.feed(sink.body)] == ["lo", ""]
    assert stream.lines.failure is None
    stream.close()
    await stream.aclose()
    assert closed == ["closed"]


async def test_closing_a_relayed_stream_mid_body_closes_ollamas_connection(
    server: WireServer, client: OllamaClient
) -> None:
    opening = asyncio.create_task(client.stream_chat(hello()))
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(CHUNKED_HEAD)
    peer.chunk(ndjson(chat_token("a", "m")))
    stream = await opening
    source = stream.source
    assert source is not None
    sink = Collecting()
    source.attach(sink)

    stream.close()  # the client went away

    await asyncio.wait_for(peer.ended.wait(), 10)
    assert sink.ending is None  # no sink call follows a close


async def test_a_forwarded_answer_is_a_source(server: WireServer, client: OllamaClient) -> None:
    forwarding = asyncio.create_task(client.forward(Forward("POST", "/api/chat", b"{}", "application/json")))
    peer = await server.connected.get()
    request = await peer.requests.get()
    assert request.startswith(b"POST /api/chat HTTP/1.1\r\n")
    assert b"\r\ncontent-type: application/json\r\n" in request
    assert b"\r\naccept: */*\r\n" in request
    peer.write(CHUNKED_HEAD)
    answer = await forwarding
    assert answer.status == 200
    assert answer.content_type == "application/x-ndjson"
    source = answer.source
    assert source is not None
    sink = Collecting()
    source.attach(sink)
    peer.chunk(b'{"a":1}\n')
    peer.last_chunk()
    await asyncio.wait_for(sink.over.wait(), 10)
    assert (sink.body, sink.ending) == (b'{"a":1}\n', "end")


async def test_an_answer_minato_made_has_no_source() -> None:
    made = RawResponse.made(200, "application/json", b"{}", "http://ollama", 1.0)
    assert made.source is None
    assert await made.read() == b"{}"
