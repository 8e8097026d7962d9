"""The seams through the app: a fake Ollama behind the interface, raw forwarding untouched (against the
stand-in served on loopback), injected limiters and the runtime's clean-up."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.openapi.spec import Parameter
from litestar.testing import AsyncTestClient
from msgspec import UnsetType

from minato.errors import OllamaTimeoutError, OllamaUnavailableError
from minato.ollama.options import OPTIONS
from minato.ollama.wire import (
    ChatChunk,
    ChatRequest,
    ChunkMessage,
    PsResponse,
    ShowResponse,
    TagModel,
    TagsResponse,
    WireMessage,
)
from minato.settings import Settings
from minato.state.windows import Bucket
from minato.upstream.client import ModelFacts, OllamaClient
from minato.upstream.ports import BackendStatus, Forward, Spread
from minato.upstream.streams import ChunkStream, PullStream, RawResponse
from minato.web.app import create_app
from minato.web.params import GENERATION_QUERY_PARAMETERS
from tests.support.payloads import Held, chat_answer
from tests.support.served_ollama import ServedOllama
from tests.support.wire_failures import refused_url

pytestmark = pytest.mark.anyio


class FakeOllama:
    """An Ollama that answers from memory: what a test (or a backend pool) can plug in."""

    base_url = "fake://ollama"

    def __init__(self) -> None:
        self.asked: list[ChatRequest] = []
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1

    async def probe(self, *, inventory: bool = True) -> TagsResponse | None:
        return await self.list_models()

    def backends(self) -> list[BackendStatus]:
        return [BackendStatus(name="fake:0", url=self.base_url, state="up")]

    def holders(self, model: str) -> list[str]:
        return ["fake:0"]

    async def knows(self, model: str) -> bool | None:
        return True

    def label(self, model: str | None) -> str:
        return model or ""

    def similar(self, name: str, limit: int = 3) -> list[str]:
        return []

    async def chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChatChunk:
        self.asked.append(request)
        return ChatChunk(model=request.model, message=ChunkMessage(content="fake answer"), done=True, eval_count=2)

    async def stream_chat(self, request: ChatRequest, *, affinity: str | None = None) -> ChunkStream:
        raise NotImplementedError

    async def pull(self, model: str, backend: str | None = None) -> PullStream:
        raise NotImplementedError

    async def load(
        self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any], backend: str | None = None
    ) -> str:
        raise NotImplementedError

    async def unload(self, model: str) -> None:
        raise NotImplementedError

    async def delete(self, model: str) -> None:
        raise NotImplementedError

    async def running(self) -> PsResponse:
        return PsResponse()

    async def list_models(self) -> TagsResponse:
        return TagsResponse(models=[TagModel(name="fake:latest", model="fake:latest")])

    async def show(self, model: str) -> ShowResponse:
        return ShowResponse(capabilities=["completion"])

    async def capabilities(self, model: str) -> frozenset[str]:
        return frozenset({"completion"})

    async def facts(self, model: str) -> ModelFacts:
        return ModelFacts(frozenset({"completion"}), None)

    def forget(self, model: str) -> None:
        pass

    async def version(self) -> str:
        return "fake"

    async def forward(
        self, request: Forward, *, model: str | None = None, generation: bool = False, spread: Spread = Spread.ONE
    ) -> RawResponse:
        raise NotImplementedError


async def test_a_fake_ollama_can_stand_in_for_the_real_one(settings: Settings) -> None:
    fake = FakeOllama()
    app = create_app(settings, upstream=lambda *_: fake)

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/fake", params={"message": "hi"})
        models = await client.get("/models_list/")

    assert response.status_code == 200
    assert response.json()["response"] == "fake answer"
    assert fake.asked[0].messages == [WireMessage(role="user", content="hi")]
    assert [m["name"] for m in models.json()["models_list"]] == ["fake:latest"]
    assert fake.closed == 1, "the runtime closes what it opened, once"


async def test_the_runtime_is_torn_down_once_even_when_a_later_part_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOllama()

    def broken_fetcher(_: Settings) -> None:
        raise OSError("the image fetcher cannot start")

    # The fetcher is the last part opened: the state and the upstream before it must be closed once.
    monkeypatch.setattr("minato.web.runtime.ImageFetcher", broken_fetcher)
    app = create_app(settings, upstream=lambda *_: fake)

    failed = False
    try:
        async with AsyncTestClient(app=app):
            pass
    except* OSError:
        failed = True

    assert failed
    assert fake.closed == 1, "what was opened before the failure is closed"


async def test_an_injected_rate_limiter_is_the_one_the_guard_asks(settings: Settings, ollama: ServedOllama) -> None:
    class Refusing:
        async def check(self, key: str, per_minute: int) -> Bucket:
            return Bucket(42.0, 0, 60.0)

        async def peek(self, key: str, per_minute: int) -> Bucket:
            return Bucket(42.0, 0, 60.0)

    ollama.post("/api/chat").respond(200, json=chat_answer())
    keyed = msgspec.structs.replace(settings, api_keys=("k",), rate_limit_per_minute=1000)
    app = create_app(keyed, limiter=Refusing())

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "hi"}, headers={"X-API-Key": "k"})

    assert response.status_code == 429
    assert response.headers["retry-after"] == "42"


def _client(ollama: ServedOllama | str, **overrides: float) -> OllamaClient:
    """A client of the served Ollama (or of ``ollama`` as a URL), through Minato's own transport."""
    url = ollama if isinstance(ollama, str) else ollama.url
    return OllamaClient(Settings(ollama_url=url, **overrides))  # type: ignore[arg-type]


async def test_forward_relays_bytes_status_and_headers_as_ollama_sends_them(ollama: ServedOllama) -> None:
    body = b'{"model":"m","messages":[],"weird":[1,2]}'
    route = ollama.post("/api/chat").mock(
        return_value=httpx.Response(
            404,
            headers={"content-type": "application/json; charset=utf-8"},
            content=b'{"error":"model \'m\' not found"}',
        )
    )
    client = _client(ollama)
    try:
        answer = await client.forward(Forward("POST", "/api/chat", body, content_type="application/json"))
        data = await answer.read()
    finally:
        await client.aclose()

    assert answer.status == 404
    assert answer.content_type == "application/json; charset=utf-8"
    assert data == b'{"error":"model \'m\' not found"}'
    sent = route.calls.last.request
    assert sent.content == body, "the body reaches Ollama byte for byte"
    assert sent.headers["host"] == ollama.host
    assert "authorization" not in sent.headers
    assert "x-api-key" not in sent.headers


async def test_forward_yields_each_chunk_the_moment_it_arrives(ollama: ServedOllama) -> None:
    # Ollama sends each chunk only once Minato has yielded the one before: nothing may wait for more.
    body = Held((b"a\n",), (b"b\n",), (b"c\n",))
    ollama.post("/api/generate").mock(side_effect=lambda _: httpx.Response(200, stream=body))
    client = _client(ollama)
    chunks: list[bytes] = []
    try:
        answer = await client.forward(Forward("POST", "/api/generate", b"{}"))
        async for chunk in answer.chunks():
            chunks.append(chunk)
            body.release()
    finally:
        await client.aclose()

    assert chunks == [b"a\n", b"b\n", b"c\n"]


async def test_forward_bounds_silence_and_names_a_refused_ollama(ollama: ServedOllama) -> None:
    async def silent() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(5)
        yield b"never"

    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, content=silent()))
    refused = refused_url()
    client, nobody = _client(ollama, idle_timeout=0.05), _client(refused)
    try:
        answer = await client.forward(Forward("POST", "/api/chat", b"{}"))
        with pytest.raises(OllamaTimeoutError, match=r"silent for 0\.05 s"):
            await answer.read()
        with pytest.raises(
            OllamaUnavailableError, match=f"unreachable at {re.escape(refused)}: the connection was refused"
        ):
            await nobody.forward(Forward("POST", "/api/show", b"{}"))
    finally:
        await client.aclose()
        await nobody.aclose()


async def test_a_callers_request_is_never_changed(ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    client = _client(ollama)
    request = ChatRequest(model="llama3.2", messages=[WireMessage(role="user", content="hi")], stream=False)
    try:
        stream = await client.stream_chat(request)
        await stream.aclose()
        await client.chat(request)
    finally:
        await client.aclose()

    assert request.stream is False


async def test_one_provider_per_runtime_field(app: Litestar) -> None:
    for name in ("settings", "metrics", "admission", "limiter", "quota", "upstream", "catalog", "sessions", "fetcher"):
        assert name in app.dependencies


def _parameters(app: Litestar, path: str) -> list[Parameter]:
    """The parameters the OpenAPI schema documents for ``GET path`` (written inline, never as references)."""
    paths = app.openapi_schema.paths
    assert paths is not None
    operation = paths[path].get
    assert operation is not None
    assert operation.parameters is not None
    parameters: list[Parameter] = []
    for parameter in operation.parameters:
        assert isinstance(parameter, Parameter), f"{parameter!r} is a reference"
        parameters.append(parameter)
    return parameters


@pytest.mark.parametrize("path", ["/{model_name}", "/stream/{model_name}"])
def test_the_documented_query_parameters_are_exactly_the_ones_understood(app: Litestar, path: str) -> None:
    documented = {parameter.name for parameter in _parameters(app, path) if parameter.param_in == "query"}

    assert documented == GENERATION_QUERY_PARAMETERS
    assert set(OPTIONS) <= documented, "every Ollama option in the table is a documented query parameter"
