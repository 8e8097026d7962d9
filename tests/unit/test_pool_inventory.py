"""One inventory for routing and for "is this a model?": what each backend lists, the names it gives
metric labels, and the pool's own operations keeping it current (no caller has to tell it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from minato.settings import Settings
from minato.upstream.pool.facade import OllamaPool
from tests.support.payloads import ndjson, not_found, pull_progress
from tests.support.pools import A, B, Fleet
from tests.support.served_ollama import Route

pytestmark = pytest.mark.anyio


class Backends(Fleet):
    """Two backends served on loopback, each listing what the test says."""

    def __init__(self) -> None:
        super().__init__((A, B))
        for served in self.served.values():
            served.post("/api/show").respond(404, json=not_found("x"))

    def lists(self, label: str, *names: str) -> Route:
        """Say what ``label`` has installed; return its ``/api/tags`` route."""
        return self.has(label, installed=names)


@pytest.fixture(name="backends")
def fx_backends() -> Iterator[Backends]:
    backends = Backends()
    try:
        yield backends
    finally:
        backends.stop()


@pytest.fixture(name="pool")
async def fx_pool(backends: Backends) -> AsyncIterator[OllamaPool]:
    settings = Settings(ollama_url=backends.ollama_url, session_store="memory://", ollama_probe_interval=0)
    pool = OllamaPool(settings)  # Minato's own transport, to each backend's served port
    yield pool
    await pool.aclose()


async def test_a_label_is_the_name_the_first_holder_lists_and_anything_else_is_other(
    pool: OllamaPool, backends: Backends
) -> None:
    fleet = backends
    fleet.lists(A, "llama3.2:latest")
    fleet.lists(B, "Qwen2.5:7b", "llama3.2")
    await pool.probe()

    assert pool.label("llama3.2") == "llama3.2:latest"
    assert pool.label("qwen2.5:7b") == "Qwen2.5:7b"
    assert pool.label("invented") == "other"
    assert pool.label(None) == ""
    assert await pool.knows("QWEN2.5:7B") is True
    assert pool.similar("qwen2.5") == ["Qwen2.5:7b"]


async def test_a_delete_strikes_the_model_from_the_inventory_and_its_label(
    pool: OllamaPool, backends: Backends
) -> None:
    fleet = backends
    fleet.lists(A, "gone:latest", "kept:latest")
    fleet.lists(B, "gone:latest")
    for url in (A, B):
        backends[url].delete("/api/delete").respond(200)
    await pool.probe()

    await pool.delete("gone")

    assert pool.holders("gone") == []
    assert pool.label("gone") == "other"
    assert pool.label("kept") == "kept:latest"


async def test_the_pools_own_pull_makes_the_next_unknown_name_ask_the_backends_again(
    pool: OllamaPool, backends: Backends
) -> None:
    fleet = backends
    fleet.lists(A, "llama3.2:latest")
    await pool.probe()
    assert await pool.knows("newcomer") is False
    lists = fleet.lists(A, "llama3.2:latest", "newcomer:latest")  # installed now, behind the pool's back
    asked = lists.call_count  # the new answer's route: asked 0 times so far

    assert await pool.knows("newcomer") is False, "missing a moment ago: remembered, not asked again"
    assert lists.call_count == asked

    for url in (A, B):
        backends[url].post("/api/pull").respond(
            200,
            headers={"content-type": "application/x-ndjson"},
            content=ndjson({"status": "pulling manifest"}, pull_progress(), {"status": "success"}),
        )
    pull = await pool.pull("newcomer")
    await pull.aclose()

    assert await pool.knows("newcomer") is True, "no caller told the pool: its pull did"
    assert pool.label("newcomer") == "newcomer:latest"
