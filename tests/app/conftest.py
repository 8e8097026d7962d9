"""The in-process app's fixtures: the Ollama stand-in served on loopback in process, Minato
pointed at it (through its production transport), and a client running the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import INSTALLED, catalogue, not_found
from tests.support.served_ollama import ServedOllama


@pytest.fixture(name="ollama")
def fx_ollama() -> Iterator[ServedOllama]:
    """The stand-in on a loopback port; tests add routes for their own answers and inspect ``calls``."""
    served = ServedOllama()
    # Nothing is loaded unless a test says otherwise (the model list asks /api/ps every time).
    served.get("/api/ps", name="ps").respond(200, json={"models": []})
    # The models the generation routes find installed (Minato checks a name against this list
    # before it asks for an answer); a test that needs another list adds its own route.
    served.get("/api/tags", name="tags").respond(200, json=catalogue(*INSTALLED))
    # A name not in that list is asked of /api/show before it is called unknown.
    served.post("/api/show", name="show").respond(404, json=not_found("unlisted"))
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(name="settings")
def fx_settings(settings: Settings, ollama: ServedOllama) -> Settings:
    """The shared small settings, pointed at this test's Ollama."""
    return msgspec.structs.replace(settings, ollama_url=ollama.url)


@pytest.fixture(name="app")
def fx_app(settings: Settings) -> Litestar:
    """Minato as it runs in production, its Ollama the served stand-in."""
    return create_app(settings)


@pytest.fixture(name="client")
async def fx_client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An async test client running the app's lifespan."""
    async with AsyncTestClient(app=app) as client:
        yield client
