"""A pool of backends, each an Ollama stand-in served on its own loopback port: the pool tests' fixtures.

Backends are named by label (``A``, ``B``, ``C``); ``fleet.url[A]`` is where one listens and
``fleet.name[A]`` the name Minato gives it (``host:port``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from minato.settings import Settings
from tests.support.payloads import catalogue, chat_done, chat_token, ndjson
from tests.support.served_ollama import Route, ServedOllama

A, B, C = "gpu-a", "gpu-b", "gpu-c"


def _loaded(*names: str) -> dict[str, Any]:
    return {
        "models": [
            {"name": n, "model": n, "size": 1, "digest": "d", "expires_at": "2099-01-01T00:00:00Z"} for n in names
        ]
    }


class Fleet:
    """Three served backends; each test says what each has installed and loaded."""

    def __init__(self, labels: tuple[str, ...] = (A, B, C)) -> None:
        # Without keep-alive, so a backend the test takes down refuses Minato's very next call.
        self.served = {label: ServedOllama(keep_alive=False) for label in labels}
        self.chats: dict[str, Route] = {}
        for label, served in self.served.items():
            served.start()
            served.get("/api/version", name="version").respond(200, json={"version": "0.12.3"})
            self.has(label)
            self.chats[label] = served.post("/api/chat", name="chat").mock(side_effect=self._answer(label))
        self.url = {label: served.url for label, served in self.served.items()}
        self.name = {label: served.host for label, served in self.served.items()}

    def __getitem__(self, label: str) -> ServedOllama:
        return self.served[label]

    @property
    def ollama_url(self) -> str:
        """``MINATO_OLLAMA_URL`` naming every backend."""
        return ",".join(self.url.values())

    def has(self, label: str, installed: tuple[str, ...] = (), loaded: tuple[str, ...] = ()) -> Route:
        """Say what ``label`` has installed and loaded; return its ``/api/tags`` route."""
        served = self.served[label]
        served.get("/api/ps", name="ps").respond(200, json=_loaded(*loaded))
        return served.get("/api/tags", name="tags").respond(200, json=catalogue(*installed))

    def down(self, label: str) -> None:
        """Stop ``label`` listening: every further connection to it is refused."""
        self.served[label].down()

    def reset(self) -> None:
        """Forget every backend's calls (a mock router's ``reset()``)."""
        for served in self.served.values():
            served.reset()

    def stop(self) -> None:
        for served in self.served.values():
            served.stop()

    @staticmethod
    def _answer(label: str) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            model = json.loads(request.content)["model"]
            return httpx.Response(200, content=ndjson(chat_token(f"from {label}", model), chat_done(model)))

        return answer

    def served_by(self) -> dict[str, int]:
        return {label: route.call_count for label, route in self.chats.items()}


@pytest.fixture(name="fleet")
def fx_fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(name="pool_settings")
def fx_pool_settings(fleet: Fleet) -> Settings:
    return Settings(
        ollama_url=fleet.ollama_url,
        session_store="memory://",
        ollama_probe_interval=0,
        backend_parallel=2,
        backend_failures=2,
        backend_cooldown=60,
    )
