"""Fixtures every kind of test shares: the asyncio backend, clean logging, a scratch directory, a Redis of
the test's own, settings, a recorded ``serve``; and the process fixtures of ``tests/support/servers.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from minato.settings import Settings
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


def small_settings(ollama_url: str = OLLAMA_URL) -> Settings:
    """Settings with small limits that tests can reach, pointing at ``ollama_url``."""
    return Settings(
        ollama_url=ollama_url,
        max_images=3,
        max_image_bytes=64 * 1024,
        max_message_chars=1000,
        session_store="memory://",
        ollama_probe_interval=0,
    )


@pytest.fixture(name="settings")
def fx_settings() -> Settings:
    """Settings pointing at an Ollama nobody serves (app tests point them at theirs), with small limits."""
    return small_settings()


@pytest.fixture(name="served")
def fx_served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Stand in for ``minato.server.cli.serve``: record each call's arguments and report success, serving nothing."""
    calls: list[tuple[object, ...]] = []

    def serve(*args: object) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr("minato.server.cli.serve", serve)
    return calls
