"""``OllamaClient`` on its own: the bytes it sends, how Ollama's answers become Minato errors, and streams.

Ollama is the stand-in served on loopback (``tests/app/conftest.py``): every failure happens on the wire.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import httpx
import pytest

from minato.errors import (
    ModelNotFoundError,
    OllamaBusyError,
    OllamaConnectionLostError,
    OllamaTimeoutError,
    OllamaUnavailableError,
    UpstreamError,
    UpstreamRejectedError,
)
from minato.ollama.wire import ChatChunk, ChatRequest, WireMessage
from minato.settings import Settings
from minato.upstream.client import OllamaClient
from minato.upstream.streams import ChunkStream
from tests.support.payloads import (
    PULL_MANIFEST,
    PULL_SUCCESS,
    PULL_UNKNOWN,
    TAGS,
    Held,
    Pieces,
    chat_done,
    chat_token,
    ndjson,
    pull_progress,
    show,
    split_every,
    streamed,
)
from tests.support.served_ollama import ServedOllama
from tests.support.wire_failures import refused_url, unanswered_url

pytestmark = pytest.mark.anyio


def make_client(ollama: ServedOllama | str, **overrides: float) -> OllamaClient:
    """A client of the served Ollama (or of ``ollama`` as a URL), through Minato's own transport."""
    url = ollama if isinstance(ollama, str) else ollama.url
    return OllamaClient(Settings(ollama_url=url, **overrides))  # type: ignore[arg-type]


@pytest.fixture(name="upstream")
async def fx_upstream(ollama: ServedOllama) -> AsyncIterator[OllamaClient]:
    client = make_client(ollama)
    yield client
    await client.aclose()


def hello(model: str = "llama3.2") -> ChatRequest:
    return ChatRequest(model=model, messages=[WireMessage(role="user", content="hi")], stream=False)


async def collect(stream: ChunkStream, tokens: list[str] | None = None) -> list[str]:
    """Drain a chunk stream into token texts (one entry per chunk, the final empty one included).

    Tokens land in ``tokens`` as they come, so a caller still sees them when the stream then fails.
    """
    tokens = [] if tokens is None else tokens
    async for batch in stream.batches():
        tokens.extend(chunk.message.content for chunk in batch)
    return tokens


# -- what goes upstream ---------------------------------------------------------------------------


async def test_a_whole_answer_is_streamed_and_put_together(upstream: OllamaClient, ollama: ServedOllama) -> None:
    # Streamed so that the first-token and idle deadlines apply to whole answers too.
    route = ollama.post("/api/chat").respond(
        200,
        content=ndjson(chat_token("Hi"), chat_token(" there!"), {**chat_done(eval_count=3), "done_reason": "length"}),
    )
    request = hello()

    chunk = await upstream.chat(request)

    assert chunk.message.content == "Hi there!"
    assert chunk.eval_count == 3
    assert chunk.done_reason == "length"
    assert route.calls.last.request.content == (
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}'
    )
    assert route.calls.last.request.headers["content-type"] == "application/json"
    assert request.stream is False, "the caller's request is left as it was"


async def test_a_whole_answer_without_a_first_token_in_time_is_a_gateway_timeout(ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=ollama.stall())
    client = make_client(ollama, first_token_timeout=0.05)
    try:
        with pytest.raises(OllamaTimeoutError, match=r"did not start answering within 0\.05 s"):
            await client.chat(hello())
    finally:
        await client.aclose()


async def test_a_stream_is_asked_for_with_stream_true(upstream: OllamaClient, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, content=ndjson(chat_token("Hi"), chat_done()))

    stream = await upstream.stream_chat(hello())
    tokens = await collect(stream)

    assert tokens == ["Hi", ""]
    assert route.calls.last.request.content == (
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}'
    )


async def test_a_pull_sends_the_model_and_stream_true(upstream: OllamaClient, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").respond(200, content=ndjson(PULL_MANIFEST, pull_progress(), PULL_SUCCESS))

    stream = await upstream.pull("llama3.2:1b")
    statuses = [item.status async for batch in stream.progress() for item in batch]

    assert statuses == ["pulling manifest", "pulling dde5aa3fc5ff", "success"]
    assert json.loads(route.calls.last.request.content) == {"model": "llama3.2:1b", "stream": True}


async def test_show_sends_the_model_and_reads_capabilities(upstream: OllamaClient, ollama: ServedOllama) -> None:
    route = ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))

    details = await upstream.show("gemma3")

    assert details.capabilities == ["completion", "vision"]
    assert details.details.family == "llama"
    assert route.calls.last.request.content == b'{"model":"gemma3"}'


async def test_list_models_and_version_are_plain_gets(upstream: OllamaClient, ollama: ServedOllama) -> None:
    tags = ollama.get("/api/tags").respond(200, json=TAGS)
    version = ollama.get("/api/version").respond(200, json={"version": "0.12.3"})

    listed = await upstream.list_models()

    assert [model.name for model in listed.models] == ["llama3.2:latest"]
    assert await upstream.version() == "0.12.3"
    assert tags.calls.last.request.content == b""
    assert version.called


# -- status translation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "minato_status", "detail"),
    [
        pytest.param(
            404,
            b'{"error":"model \'nope\' not found"}',
            {"content-type": "application/json"},
            ModelNotFoundError,
            404,
            "model 'nope' not found",
            id="404-json-is-unknown-model",
        ),
        pytest.param(
            400,
            b'{"error":"\\"bert\\" does not support chat"}',
            {"content-type": "application/json"},
            UpstreamRejectedError,
            400,
            '"bert" does not support chat',
            id="400-is-rejected",
        ),
        pytest.param(
            500,
            b'{"error":"model runner has unexpectedly stopped"}',
            {"content-type": "application/json"},
            UpstreamError,
            502,
            "Ollama answered 500: model runner has unexpectedly stopped",
            id="500-is-bad-gateway",
        ),
        pytest.param(
            500,
            b"<html>Internal error</html>",
            {"content-type": "text/html"},
            UpstreamError,
            502,
            "Ollama answered 500: <html>Internal error</html>",
            id="non-json-error-body",
        ),
        pytest.param(502, b"", {}, UpstreamError, 502, "Ollama answered 502", id="empty-error-body"),
    ],
)
async def test_ollamas_status_becomes_the_honest_minato_error(
    upstream: OllamaClient,
    ollama: ServedOllama,
    status: int,
    body: bytes,
    headers: dict[str, str],
    error: type[Exception],
    minato_status: int,
    detail: str,
) -> None:
    ollama.post("/api/chat").respond(status, content=body, headers=headers)

    with pytest.raises(error) as caught:
        await upstream.chat(hello("nope"))

    assert type(caught.value) is error
    assert caught.value.status_code == minato_status  # type: ignore[attr-defined]
    assert caught.value.detail == detail  # type: ignore[attr-defined]


async def test_a_gin_404_page_means_the_url_is_not_ollama(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(404, text="404 page not found")

    with pytest.raises(UpstreamError) as caught:
        await upstream.chat(hello())

    assert type(caught.value) is UpstreamError
    assert caught.value.status_code == 502
    assert "MINATO_OLLAMA_URL" in caught.value.detail
    assert "404 page not found" in caught.value.detail


@pytest.mark.parametrize("status", [429, 503])
async def test_a_full_queue_is_busy_with_retry_after(upstream: OllamaClient, ollama: ServedOllama, status: int) -> None:
    message = "server busy, please try again.  maximum pending requests exceeded"
    ollama.post("/api/chat").respond(status, json={"error": message})

    with pytest.raises(OllamaBusyError) as caught:
        await upstream.chat(hello())

    assert caught.value.status_code == 503
    assert caught.value.detail == message
    assert caught.value.headers == {"Retry-After": "5"}


async def test_an_empty_403_explains_ollamas_host_guard(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(403)

    with pytest.raises(UpstreamError) as caught:
        await upstream.chat(hello())

    assert caught.value.status_code == 502
    assert "403" in caught.value.detail
    assert "Host" in caught.value.detail
    assert "MINATO_OLLAMA_URL" in caught.value.detail


async def test_a_status_error_before_a_stream_is_raised_by_stream_chat(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(404, json={"error": "model 'nope' not found"})

    with pytest.raises(ModelNotFoundError, match="model 'nope' not found"):
        await upstream.stream_chat(hello("nope"))


async def test_an_error_in_a_200_non_streamed_answer_is_a_bad_gateway(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, json={"error": "boom"})

    with pytest.raises(UpstreamError, match="Ollama failed: boom") as caught:
        await upstream.chat(hello())

    assert caught.value.status_code == 502


# -- transport failures and deadlines ---------------------------------------------------------------


async def test_a_refused_connection_is_unavailable_naming_the_url() -> None:
    url = refused_url()
    client = make_client(url)
    try:
        with pytest.raises(OllamaUnavailableError) as caught:
            await client.chat(hello())
    finally:
        await client.aclose()

    assert caught.value.status_code == 503
    assert caught.value.detail == f"Ollama is unreachable at {url}: the connection was refused"


async def test_a_connect_timeout_is_unavailable_not_a_timeout() -> None:
    with unanswered_url() as url:
        client = make_client(url, connect_timeout=0.05)
        try:
            with pytest.raises(OllamaUnavailableError) as caught:
                await client.version()
        finally:
            await client.aclose()

    assert caught.value.status_code == 503
    assert "MINATO_CONNECT_TIMEOUT" in caught.value.detail


async def test_a_read_timeout_is_a_gateway_timeout(ollama: ServedOllama) -> None:
    # Ollama answers 200 and then never a byte of the body (never released): reading it times out.
    silent = Held((), ())
    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, stream=silent))
    client = make_client(ollama, first_token_timeout=0.05)
    try:
        with pytest.raises(OllamaTimeoutError) as caught:
            await client.chat(hello())
    finally:
        await client.aclose()

    assert caught.value.status_code == 504
    assert caught.value.detail == "Ollama did not send a first token within 0.05 s", (
        "the headers came; the body did not"
    )


async def test_a_dropped_connection_is_a_bad_gateway(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=httpx.RemoteProtocolError("Server disconnected"))

    with pytest.raises(UpstreamError) as caught:
        await upstream.stream_chat(hello())

    assert type(caught.value) is OllamaConnectionLostError, "a pool tries the next backend after this one"
    assert caught.value.status_code == 502
    assert caught.value.detail == f"Ollama at {ollama.url} closed the connection before answering"


async def test_no_first_token_in_time_is_a_gateway_timeout(ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=ollama.stall())
    client = make_client(ollama, first_token_timeout=0.05)
    try:
        with pytest.raises(OllamaTimeoutError) as caught:
            await client.stream_chat(hello())
    finally:
        await client.aclose()

    assert caught.value.status_code == 504
    assert "0.05" in caught.value.detail


async def test_a_first_line_that_is_slow_after_the_headers_is_a_gateway_timeout(ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(ndjson(chat_token("late")), pauses={0: 1.0}))
    client = make_client(ollama, first_token_timeout=0.05)
    try:
        with pytest.raises(OllamaTimeoutError):
            await client.stream_chat(hello())
    finally:
        await client.aclose()


async def test_a_whole_answer_over_the_request_timeout_is_a_gateway_timeout(ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=ollama.stall())
    client = make_client(ollama, request_timeout=0.05)
    try:
        with pytest.raises(OllamaTimeoutError, match=r"longer than 0\.05 s \(MINATO_REQUEST_TIMEOUT\)"):
            await client.chat(hello())
    finally:
        await client.aclose()


# -- streams ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(1,), (3, 7), (5, 1, 64), (10_000,)], ids=["bytewise", "3-7", "5-1-64", "whole"])
async def test_lines_split_at_any_byte_boundary_are_reassembled(
    upstream: OllamaClient, ollama: ServedOllama, sizes: tuple[int, ...]
) -> None:
    words = ["Héllo", " wörld", " 日本", "\n", " 🎉", ' "quoted"']
    body = ndjson(*[chat_token(word) for word in words], chat_done(eval_count=6))
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*split_every(body, sizes)))

    stream = await upstream.stream_chat(hello())
    chunks: list[ChatChunk] = [chunk async for batch in stream.batches() for chunk in batch]

    assert [chunk.message.content for chunk in chunks] == [*words, ""]
    assert chunks[-1].done
    assert chunks[-1].eval_count == 6


async def test_a_last_line_without_a_newline_still_counts(upstream: OllamaClient, ollama: ServedOllama) -> None:
    body = ndjson(chat_token("a"), chat_done()).rstrip(b"\n")
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(body[:20], body[20:]))

    stream = await upstream.stream_chat(hello())

    assert await collect(stream) == ["a", ""]


async def test_an_error_line_mid_stream_raises_after_the_earlier_tokens(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    pieces = (ndjson(chat_token("one")), ndjson(chat_token("two"), {"error": "runner crashed"}))
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*pieces))
    stream = await upstream.stream_chat(hello())
    tokens: list[str] = []

    with pytest.raises(UpstreamError, match="mid-stream: runner crashed") as caught:
        await collect(stream, tokens)

    assert tokens == ["one", "two"]
    assert caught.value.status_code == 502


async def test_an_error_as_the_first_line_is_raised_by_stream_chat_itself(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(ndjson({"error": "out of memory"})))

    with pytest.raises(UpstreamError, match="Ollama failed: out of memory"):
        await upstream.stream_chat(hello())


async def test_a_stream_that_ends_without_done_raises(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(ndjson(chat_token("a")), ndjson(chat_token("b"))))
    stream = await upstream.stream_chat(hello())
    tokens: list[str] = []

    with pytest.raises(UpstreamError, match="closed the stream before it was done"):
        await collect(stream, tokens)

    assert tokens == ["a", "b"]


async def test_an_empty_stream_fails_before_anything_is_relayed(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(b""))

    with pytest.raises(UpstreamError):
        await upstream.stream_chat(hello())


async def test_a_malformed_line_mid_stream_raises(upstream: OllamaClient, ollama: ServedOllama) -> None:
    body = Held((ndjson(chat_token("a")),), (b"{not json\n",))
    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, stream=body))
    stream = await upstream.stream_chat(hello())
    body.release()

    with pytest.raises(UpstreamError) as caught:
        await collect(stream)

    assert caught.value.detail == "Ollama sent a line that is not valid JSON"


async def test_a_malformed_first_line_is_raised_by_stream_chat(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(b"<html>proxy error</html>\n"))

    with pytest.raises(UpstreamError) as caught:
        await upstream.stream_chat(hello())

    assert caught.value.detail == "Ollama sent a line that is not valid JSON"


async def test_a_line_of_the_wrong_shape_is_named_without_msgspecs_words(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(b'{"message": {"content": 3}, "done": false}\n'))

    with pytest.raises(UpstreamError) as caught:
        await upstream.stream_chat(hello())

    assert caught.value.detail == "Ollama sent a line that does not have the shape of Ollama's API"


async def test_silence_mid_stream_is_a_gateway_timeout(ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(
        side_effect=lambda _: streamed(ndjson(chat_token("a")), ndjson(chat_done()), pauses={1: 1.0})
    )
    client = make_client(ollama, idle_timeout=0.05)
    try:
        stream = await client.stream_chat(hello())
        tokens: list[str] = []
        with pytest.raises(OllamaTimeoutError, match=r"silent for 0\.05 s"):
            await collect(stream, tokens)
        await stream.aclose()
    finally:
        await client.aclose()

    assert tokens == ["a"]


async def test_a_stream_longer_than_the_request_timeout_is_ended(ollama: ServedOllama) -> None:
    # A token every 0.05 s for 5 s: however slowly a busy machine runs it, the end comes long after the deadline.
    pieces = [ndjson(chat_token(str(n))) for n in range(100)]
    ollama.post("/api/chat").mock(
        side_effect=lambda _: streamed(*pieces, ndjson(chat_done()), pauses=dict.fromkeys(range(1, 101), 0.05))
    )
    client = make_client(ollama, idle_timeout=10, request_timeout=0.12)
    try:
        stream = await client.stream_chat(hello())
        tokens: list[str] = []
        with pytest.raises(OllamaTimeoutError, match=r"longer than 0\.12 s \(MINATO_REQUEST_TIMEOUT\)"):
            await collect(stream, tokens)
        await stream.aclose()
    finally:
        await client.aclose()

    assert 1 <= len(tokens) < 100, "tokens kept flowing, yet the whole stream was cut at its deadline"


async def test_a_stream_that_breaks_mid_way_is_a_bad_gateway(upstream: OllamaClient, ollama: ServedOllama) -> None:
    class Breaking(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield ndjson(chat_token("a"))
            raise httpx.RemoteProtocolError("peer closed connection")

    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, stream=Breaking()))
    stream = await upstream.stream_chat(hello())

    with pytest.raises(
        UpstreamError, match=f"^the stream from Ollama at {ollama.url} broke off before it was complete$"
    ):
        await collect(stream)


class _Watched(Pieces):
    """A body whose end (sent, or cut off by the client going away) the test can wait for."""

    def __init__(self, *pieces: bytes, pauses: dict[int, float]) -> None:
        super().__init__(*pieces, pauses=pauses)
        self.ended = threading.Event()

    async def aclose(self) -> None:
        await super().aclose()
        self.ended.set()


async def test_closing_a_stream_closes_the_upstream_response(upstream: OllamaClient, ollama: ServedOllama) -> None:
    # Ollama is still generating (its last line an hour away) when the caller closes the stream.
    body = _Watched(ndjson(chat_token("a")), ndjson(chat_done()), pauses={1: 3600})
    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, stream=body))
    stream = await upstream.stream_chat(hello())

    await stream.aclose()
    await stream.aclose()

    assert await asyncio.to_thread(body.ended.wait, 10), "Ollama saw the connection go and stopped its answer"
    assert body.closed


# -- pulls -----------------------------------------------------------------------------------------


async def test_an_unknown_model_in_a_200_pull_stream_is_not_found(upstream: OllamaClient, ollama: ServedOllama) -> None:
    route = ollama.post("/api/pull").mock(side_effect=lambda _: streamed(ndjson(PULL_MANIFEST), ndjson(PULL_UNKNOWN)))

    with pytest.raises(ModelNotFoundError) as caught:
        await upstream.pull("nope")

    assert caught.value.status_code == 404
    assert caught.value.detail == "pull model manifest: file does not exist"
    assert route.call_count == 1


async def test_another_error_before_progress_is_a_bad_gateway(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/pull").respond(200, content=ndjson(PULL_MANIFEST, {"error": "dial tcp: no route to host"}))

    with pytest.raises(UpstreamError, match="pull failed: dial tcp: no route to host") as caught:
        await upstream.pull("llama3.2")

    assert type(caught.value) is UpstreamError


async def test_a_pull_is_primed_past_the_manifest_then_relays_progress_to_success(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    pieces = (
        ndjson(PULL_MANIFEST),
        ndjson(pull_progress()),
        ndjson(pull_progress(completed=100)),
        ndjson(pull_progress(completed=200), {"status": "verifying sha256 digest"}),
        ndjson(PULL_SUCCESS),
    )
    body = Held(pieces[:2], pieces[2:])  # Ollama goes on pulling while Minato relays what it primed on
    ollama.post("/api/pull").mock(side_effect=lambda _: httpx.Response(200, stream=body))

    stream = await upstream.pull("llama3.2")
    primed = [item.status for item in stream.first]
    body.release()
    seen = [(item.status, item.completed) async for batch in stream.progress() for item in batch]

    assert primed == ["pulling manifest", "pulling dde5aa3fc5ff"]
    assert seen == [
        ("pulling manifest", 0),
        ("pulling dde5aa3fc5ff", 0),
        ("pulling dde5aa3fc5ff", 100),
        ("pulling dde5aa3fc5ff", 200),
        ("verifying sha256 digest", 0),
        ("success", 0),
    ]


async def test_a_pull_that_ends_before_success_raises(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/pull").mock(side_effect=lambda _: streamed(ndjson(PULL_MANIFEST), ndjson(pull_progress())))
    stream = await upstream.pull("llama3.2")

    with pytest.raises(UpstreamError, match="before it succeeded"):
        async for _ in stream.progress():
            pass


async def test_a_pull_stream_that_ends_at_the_manifest_raises(upstream: OllamaClient, ollama: ServedOllama) -> None:
    ollama.post("/api/pull").respond(200, content=ndjson(PULL_MANIFEST))

    with pytest.raises(UpstreamError, match="before reporting progress"):
        await upstream.pull("llama3.2")


# -- capabilities cache ----------------------------------------------------------------------------


async def test_capabilities_are_cached_until_forgotten(upstream: OllamaClient, ollama: ServedOllama) -> None:
    route = ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))

    first = await upstream.capabilities("gemma3")
    second = await upstream.capabilities("gemma3:latest")
    assert route.call_count == 1
    upstream.forget("gemma3")
    third = await upstream.capabilities("gemma3")

    assert first == second == third == frozenset({"completion", "vision"})
    assert route.call_count == 2


async def test_capabilities_expire_after_their_ttl(ollama: ServedOllama) -> None:
    route = ollama.post("/api/show").respond(200, json=show(["completion"]))
    client = make_client(ollama, capabilities_ttl=0)
    try:
        await client.capabilities("llama3.2")
        await client.capabilities("llama3.2")
    finally:
        await client.aclose()

    assert route.call_count == 2


async def test_concurrent_capability_lookups_share_one_show_call(upstream: OllamaClient, ollama: ServedOllama) -> None:
    async def slow_show(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return httpx.Response(200, json=show(["completion", "vision"]))

    route = ollama.post("/api/show").mock(side_effect=slow_show)

    results = await asyncio.gather(*[upstream.capabilities("gemma3") for _ in range(5)])

    assert route.call_count == 1
    assert all(result == frozenset({"completion", "vision"}) for result in results)


async def test_a_failed_capability_lookup_fails_every_waiter_and_is_not_cached(
    upstream: OllamaClient, ollama: ServedOllama
) -> None:
    async def missing(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return httpx.Response(404, json={"error": "model 'nope:latest' not found"})

    route = ollama.post("/api/show").mock(side_effect=missing)

    results = await asyncio.gather(*[upstream.capabilities("nope") for _ in range(3)], return_exceptions=True)
    with pytest.raises(ModelNotFoundError):
        await upstream.capabilities("nope")

    assert all(isinstance(result, ModelNotFoundError) for result in results)
    assert route.call_count == 2
