"""Ollama mocked at Minato's HTTP transport by respx: what every app test used before the served
stand-in (``tests/app/conftest.py``). A module still on it imports these fixtures, which override the
served ones for that module only::

    from tests.app.respx_ollama import fx_app, fx_ollama, fx_settings  # noqa: F401 - on respx still
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx
from litestar import Litestar

from minato.settings import Settings
from minato.web.app import create_app
from tests.conftest import OLLAMA_URL, small_settings
from tests.support.payloads import INSTALLED, catalogue, not_found


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


@pytest.fixture(name="settings")
def fx_settings() -> Settings:
    """Settings pointing at the mocked Ollama."""
    return small_settings()


@pytest.fixture(name="app")
def fx_app(settings: Settings, ollama: respx.MockRouter) -> Litestar:
    """Minato wired to the respx router through an httpx mock transport."""
    return create_app(settings, transport=httpx.MockTransport(ollama.async_handler))
