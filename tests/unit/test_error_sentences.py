"""Error sentences without the app: a cut chunked stream, a refused port through the client, msgspec's
messages, each in Minato's words."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from minato.errors import OllamaUnavailableError, UpstreamError
from minato.ollama.wire import ChatRequest, WireMessage
from minato.settings import Settings
from minato.upstream.client import OllamaClient
from minato.web.rendering import validation_sentence
from tests.support.payloads import chat_token, ndjson

pytestmark = pytest.mark.anyio


def closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting to it is refused


def hello() -> ChatRequest:
    return ChatRequest(model="llama3.2", messages=[WireMessage(role="user", content="hi")], stream=True)


@pytest.fixture(name="truncating_ollama")
async def fx_truncating_ollama() -> AsyncIterator[str]:
    """A real HTTP server that starts a chunked NDJSON stream and drops the connection mid-way."""

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(ndjson(chat_token("a")))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the client sees a broken transfer encoding
        return response

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_chunked_stream_cut_short_is_told_in_minatos_words_cause_logged(truncating_ollama: str) -> None:
    upstream = OllamaClient(Settings(ollama_url=truncating_ollama, session_store="memory://"))
    try:
        stream = await upstream.stream_chat(hello())
        with capture_logs() as events, pytest.raises(UpstreamError) as caught:
            async for _ in stream.batches():
                pass
    finally:
        await upstream.aclose()

    assert caught.value.detail == f"the stream from Ollama at {truncating_ollama} broke off before it was complete"
    (logged,) = [event for event in events if event["event"] == "ollama_stream_broke"]
    assert logged["error"] == "EOFError: the connection closed before the body was complete"


async def test_a_refused_connection_through_the_client_names_the_url() -> None:
    url = f"http://127.0.0.1:{closed_loopback_port()}"
    upstream = OllamaClient(Settings(ollama_url=url, session_store="memory://"))
    try:
        with pytest.raises(OllamaUnavailableError) as caught:
            await upstream.version()
    finally:
        await upstream.aclose()

    assert caught.value.detail == f"Ollama is unreachable at {url}: the connection was refused"


@pytest.mark.parametrize(
    ("message", "allowed", "sentence"),
    [
        ("Expected `int | null`, got `str`", (), "must be an integer"),
        ("Expected `float`, got `str`", (), "must be a number"),
        ("Expected `bool | null`, got `str`", (), "must be true or false"),
        ("Expected `str`, got `int`", (), "must be a string"),
        ("Expected `object`, got `array`", (), "must be a JSON object"),
        ("Expected `int | str`, got `float`", (), "is not valid"),
        ("Expected `int` >= 1", (), "must be at least 1"),
        ("Expected `float` <= 100.0", (), "must be at most 100"),
        ("Expected `float` > 0.5", (), "must be more than 0.5"),
        ("Expected `int` < -2", (), "must be less than -2"),
        ("Expected `str` of length >= 1", (), "must not be empty"),
        ("Expected `str` of length <= 128", (), "must be at most 128 characters"),
        ("Expected `array` of length >= 2", (), "must be at least 2 items"),
        ("Invalid enum value 'xml'", ("json",), "must be one of: json"),
        ("Invalid enum value 'xml'", (), "is not valid"),
        ("Number out of range", (), "is out of range"),
        ("something msgspec says one day", (), "is not valid"),
    ],
)
def test_msgspec_messages_become_minato_sentences(message: str, allowed: tuple[str, ...], sentence: str) -> None:
    assert validation_sentence(message, allowed) == sentence
