"""A pool of backends answered by respx: the pool tests' fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from minato.settings import Settings
from tests.support.payloads import catalogue, chat_done, chat_token, ndjson

A, B, C = "http://gpu-a.test:11434", "http://gpu-b.test:11434", "http://gpu-c.test:11434"
NAME = {A: "gpu-a.test:11434", B: "gpu-b.test:11434", C: "gpu-c.test:11434"}


def _loaded(*names: str) -> dict[str, Any]:
    return {
        "models": [
            {"name": n, "model": n, "size": 1, "digest": "d", "expires_at": "2099-01-01T00:00:00Z"} for n in names
        ]
    }


class Fleet:
    """Three mocked backends; each test says what each has installed and loaded."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.chats: dict[str, respx.Route] = {}
        for url in (A, B, C):
            router.get(f"{url}/api/version", name=f"version-{url}").respond(200, json={"version": "0.12.3"})
            self.has(url)
            self.chats[url] = router.post(f"{url}/api/chat", name=f"chat-{url}").mock(side_effect=self._answer(url))

    def has(self, url: str, installed: tuple[str, ...] = (), loaded: tuple[str, ...] = ()) -> None:
        self.router.route(method="GET", url=f"{url}/api/tags", name=f"tags-{url}").respond(
            200, json=catalogue(*installed)
        )
        self.router.route(method="GET", url=f"{url}/api/ps", name=f"ps-{url}").respond(200, json=_loaded(*loaded))

    def down(self, url: str) -> None:
        for path in ("version", "tags", "ps"):
            self.router.routes[f"{path}-{url}"].mock(side_effect=httpx.ConnectError("refused"))
        self.chats[url].mock(side_effect=httpx.ConnectError("refused"))

    @staticmethod
    def _answer(url: str) -> Any:
        def answer(request: httpx.Request) -> httpx.Response:
            model = json.loads(request.content)["model"]
            return httpx.Response(200, content=ndjson(chat_token(f"from {url}", model), chat_done(model)))

        return answer

    def served_by(self) -> dict[str, int]:
        return {url: route.call_count for url, route in self.chats.items()}


@pytest.fixture(name="router")
def fx_router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture(name="fleet")
def fx_fleet(router: respx.MockRouter) -> Fleet:
    return Fleet(router)


@pytest.fixture(name="pool_settings")
def fx_pool_settings() -> Settings:
    return Settings(
        ollama_url=f"{A},{B},{C}",
        session_store="memory://",
        ollama_probe_interval=0,
        backend_parallel=2,
        backend_failures=2,
        backend_cooldown=60,
    )
