"""The seams the next features plug into: the Ollama interface, raw forwarding, the runtime, the error tree."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import respx
from litestar import Litestar
from litestar.openapi.spec import Parameter
from litestar.testing import AsyncTestClient
from msgspec import UnsetType

from minato.auth.caller import Caller, Role
from minato.core.admission import Admission
from minato.core.generation import Lease, Question
from minato.core.policy import Policy
from minato.core.sessions import SessionManager
from minato.errors import ForbiddenError, OllamaTimeoutError, OllamaUnavailableError
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
from minato.state.memory import LocalTurnLocks, MemoryStore
from minato.upstream.client import ModelFacts, OllamaClient
from minato.upstream.ports import BackendStatus, Forward, Spread
from minato.upstream.streams import ChunkStream, PullStream, RawResponse
from minato.web.app import create_app
from minato.web.params import GENERATION_QUERY_PARAMETERS
from tests.conftest import OLLAMA_URL
from tests.payloads import Pieces, chat_answer

pytestmark = pytest.mark.anyio
SRC = Path(__file__).resolve().parents[2] / "src" / "minato"


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


async def test_an_injected_rate_limiter_is_the_one_the_guard_asks(settings: Settings, ollama: respx.MockRouter) -> None:
    class Refusing:
        async def check(self, key: str, per_minute: int) -> float:
            return 42.0

    ollama.post("/api/chat").respond(200, json=chat_answer())
    keyed = msgspec.structs.replace(settings, api_keys=("k",), rate_limit_per_minute=1000)
    app = create_app(keyed, transport=httpx.MockTransport(ollama.async_handler), limiter=Refusing())

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "hi"}, headers={"X-API-Key": "k"})

    assert response.status_code == 429
    assert response.headers["retry-after"] == "42"


def _client(ollama: respx.MockRouter, **overrides: float) -> OllamaClient:
    return OllamaClient(
        Settings(ollama_url=OLLAMA_URL, **overrides),  # type: ignore[arg-type]
        transport=httpx.MockTransport(ollama.async_handler),
    )


async def test_forward_relays_bytes_status_and_headers_as_ollama_sends_them(ollama: respx.MockRouter) -> None:
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
    assert sent.headers["host"] == "ollama.test:11434"
    assert "authorization" not in sent.headers
    assert "x-api-key" not in sent.headers


async def test_forward_yields_each_chunk_the_moment_it_arrives(ollama: respx.MockRouter) -> None:
    ollama.post("/api/generate").mock(
        side_effect=lambda _: httpx.Response(200, stream=Pieces(b"a\n", b"b\n", b"c\n", pauses={2: 0.05}))
    )
    client = _client(ollama)
    try:
        answer = await client.forward(Forward("POST", "/api/generate", b"{}"))
        chunks = [chunk async for chunk in answer.chunks()]
    finally:
        await client.aclose()

    assert chunks == [b"a\n", b"b\n", b"c\n"]


async def test_forward_bounds_silence_and_names_a_refused_ollama(ollama: respx.MockRouter) -> None:
    async def silent() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(5)
        yield b"never"

    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, content=silent()))
    ollama.post("/api/show").mock(side_effect=httpx.ConnectError("refused"))
    client = _client(ollama, idle_timeout=0.05)
    try:
        answer = await client.forward(Forward("POST", "/api/chat", b"{}"))
        with pytest.raises(OllamaTimeoutError, match=r"silent for 0\.05 s"):
            await answer.read()
        with pytest.raises(OllamaUnavailableError, match=r"unreachable at http://ollama\.test:11434"):
            await client.forward(Forward("POST", "/api/show", b"{}"))
    finally:
        await client.aclose()


async def test_a_callers_request_is_never_changed(ollama: respx.MockRouter) -> None:
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


def _minato_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for statement in ast.walk(tree):
        if isinstance(statement, ast.ImportFrom) and statement.module and statement.module.startswith("minato"):
            found.add(statement.module)
        elif isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names if alias.name.startswith("minato"))
    return found


def test_the_error_tree_is_a_leaf() -> None:
    assert _minato_imports(SRC / "errors.py") == set()


def test_nothing_above_upstream_names_the_concrete_client() -> None:
    """Handlers, the generation and the catalog depend on the Ollama Protocol, never on OllamaClient."""
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] != "upstream"
        and path.name not in {"app.py"}
        and "OllamaClient" in path.read_text()
    ]
    assert offenders == []


def test_the_layers_contract_holds() -> None:
    """import-linter's contracts (pyproject.toml): each layer imports only the layers below it, type-only
    imports included, and nothing below the web layer imports the web framework."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(  # noqa: S603 - the venv's own lint-imports, fixed arguments
        [str(lint), "--no-cache"], capture_output=True, text=True, check=False, cwd=SRC.parents[1]
    )
    assert done.returncode == 0, done.stdout[-4000:]


@pytest.mark.parametrize("init", sorted(SRC.rglob("__init__.py")), ids=lambda path: str(path.parent.relative_to(SRC)))
def test_a_package_re_exports_nothing(init: Path) -> None:
    """Where a name lives is where it is imported from: an ``__init__`` that re-exported its modules'
    names made every import of the package load all of them (and the settings load the HTTP client)."""
    tree = ast.parse(init.read_text())
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minato")
        for alias in node.names
    }
    exported = {
        element.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets)
        for element in getattr(node.value, "elts", [])
        if isinstance(element, ast.Constant)
    }
    assert exported & imported == set()


def test_only_the_renderer_knows_the_error_body_shape() -> None:
    shape = '"detail"'
    knowing = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if shape in path.read_text())
    assert knowing == ["web/rendering.py"]


async def test_one_provider_per_runtime_field(app: Litestar) -> None:
    for name in ("settings", "metrics", "admission", "limiter", "quota", "upstream", "catalog", "sessions", "fetcher"):
        assert name in app.dependencies


async def test_a_lease_commits_at_most_once_and_releases_exactly_once(settings: Settings) -> None:
    admission = Admission(total=1, per_model=0, queue=0, wait_seconds=1)
    sessions = SessionManager(MemoryStore(), LocalTurnLocks(), settings)
    await sessions.start()
    try:
        slot = admission.try_acquire("m:latest")
        lease = Lease(await sessions.begin("", "s"), slot, "m")
        lease.question = Question("hi", [])

        await lease.commit("first")
        await lease.commit("second")
        lease.release()
        lease.release()

        session = await sessions.get("", "s")
        assert session is not None
        assert [m.content for m in session.messages] == ["hi", "first"]
        assert admission.running == 0
        assert admission.try_acquire("m:latest") is not None, "the slot came back, once"
        async with sessions.exclusive("", "s"):  # the turn came back too
            pass
    finally:
        await sessions.stop()


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


class ModelWithContext:
    """Only what the policy asks of Ollama (the :class:`~minato.upstream.ports.Facts` port)."""

    def __init__(self, context_length: int | None) -> None:
        self.asked: list[str] = []
        self.context_length = context_length

    async def capabilities(self, model: str) -> frozenset[str]:
        return (await self.facts(model)).capabilities

    async def facts(self, model: str) -> ModelFacts:
        self.asked.append(model)
        return ModelFacts(frozenset({"completion"}), self.context_length)


async def test_a_consumer_is_faked_by_the_one_port_it_needs(settings: Settings) -> None:
    policy = Policy(settings)
    user = Caller(fingerprint="f" * 12, role=Role.USER, name="user")
    upstream = ModelWithContext(4096)

    await policy.check_num_ctx(user, upstream, "m", 4096)
    with pytest.raises(ForbiddenError, match="the model's context length"):
        await policy.check_num_ctx(user, upstream, "m", 4097)
    assert upstream.asked == ["m", "m"]
