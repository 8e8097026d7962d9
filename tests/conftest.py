"""Shared fixtures: settings, a respx router standing in for Ollama, the app and its client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import respx
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import INSTALLED, catalogue, not_found
from tests.support.redis_server import RedisServer, RedisServerMissingError

# The process fixtures (Minato and the stand-in as real servers) serve e2e, contract, load and browser tests.
pytest_plugins = ["tests.support.servers"]

OLLAMA_URL = "http://ollama.test:11434"


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the loop Minato is served on."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Give each test unconfigured, uncached structlog so ``capture_logs`` sees every event."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _run_in_a_scratch_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep files a test creates (the default SQLite session store) out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(name="redis_server")
def fx_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own (persistence off), which it may stop and start again on
    the same port. Missing ``redis-server`` fails the test: the shared state is never left untested."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(name="redis_url")
def fx_redis_url(redis_server: RedisServer) -> str:
    """The URL of the test's own, empty Redis."""
    return redis_server.url


@pytest.fixture(name="settings")
def fx_settings() -> Settings:
    """Settings pointing at the mocked Ollama, with small limits that tests can reach."""
    return Settings(
        ollama_url=OLLAMA_URL,
        max_images=3,
        max_image_bytes=64 * 1024,
        max_message_chars=1000,
        session_store="memory://",
        ollama_probe_interval=0,
    )


@pytest.fixture(name="ollama")
def fx_ollama() -> Iterator[respx.MockRouter]:
    """A respx router answering for Ollama; tests add routes and inspect ``calls``."""
    with respx.mock(base_url=OLLAMA_URL, assert_all_called=False, assert_all_mocked=True) as router:
        # Nothing is loaded unless a test says otherwise (the model list asks /api/ps every time).
        router.get("/api/ps", name="ps").respond(200, json={"models": []})
        # The models the generation routes find installed (Minato checks a name against this list
        # before it asks for an answer); a test that needs another list adds its own route.
        router.get("/api/tags", name="tags").respond(200, json=catalogue(*INSTALLED))
        # A name not in that list is asked of /api/show before it is called unknown.
        router.post("/api/show", name="show").respond(404, json=not_found("unlisted"))
        yield router


@pytest.fixture(name="app")
def fx_app(settings: Settings, ollama: respx.MockRouter) -> Litestar:
    """Minato wired to the respx router through an httpx mock transport."""
    return create_app(settings, transport=httpx.MockTransport(ollama.async_handler))


@pytest.fixture(name="client")
async def fx_client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An async test client running the app's lifespan."""
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture(name="served")
def fx_served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Stand in for ``minato.server.cli.serve``: record each call's arguments and report success, serving nothing."""
    calls: list[tuple[object, ...]] = []

    def serve(*args: object) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr("minato.server.cli.serve", serve)
    return calls
