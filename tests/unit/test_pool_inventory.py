"""One inventory for routing and for "is this a model?": what each backend lists, the names it gives
metric labels, and the pool's own operations keeping it current (no caller has to tell it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from minato.settings import Settings
from minato.upstream.pool.facade import OllamaPool
from tests.support.payloads import catalogue, ndjson, not_found, pull_progress

pytestmark = pytest.mark.anyio

A, B = "http://gpu-a.test:11434", "http://gpu-b.test:11434"


class Backends:
    """Two mocked backends, each listing what the test says."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        for url in (A, B):
            router.get(f"{url}/api/version").respond(200, json={"version": "0.12.3"})
            router.get(f"{url}/api/ps").respond(200, json={"models": []})
            router.post(f"{url}/api/show").respond(404, json=not_found("x"))
            self.has(url)

    def has(self, url: str, *names: str) -> respx.Route:
        return self.router.route(method="GET", url=f"{url}/api/tags", name=f"tags-{url}").respond(
            200, json=catalogue(*names)
        )


@pytest.fixture(name="backends")
def fx_backends() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


@pytest.fixture(name="pool")
async def fx_pool(backends: respx.MockRouter) -> AsyncIterator[OllamaPool]:
    settings = Settings(ollama_url=f"{A},{B}", session_store="memory://", ollama_probe_interval=0)
    pool = OllamaPool(settings, transport=httpx.MockTransport(backends.async_handler))
    yield pool
    await pool.aclose()


async def test_a_label_is_the_name_the_first_holder_lists_and_anything_else_is_other(
    pool: OllamaPool, backends: respx.MockRouter
) -> None:
    fleet = Backends(backends)
    fleet.has(A, "llama3.2:latest")
    fleet.has(B, "Qwen2.5:7b", "llama3.2")
    await pool.probe()

    assert pool.label("llama3.2") == "llama3.2:latest"
    assert pool.label("qwen2.5:7b") == "Qwen2.5:7b"
    assert pool.label("invented") == "other"
    assert pool.label(None) == ""
    assert await pool.knows("QWEN2.5:7B") is True
    assert pool.similar("qwen2.5") == ["Qwen2.5:7b"]


async def test_a_delete_strikes_the_model_from_the_inventory_and_its_label(
    pool: OllamaPool, backends: respx.MockRouter
) -> None:
    fleet = Backends(backends)
    fleet.has(A, "gone:latest", "kept:latest")
    fleet.has(B, "gone:latest")
    for url in (A, B):
        backends.delete(f"{url}/api/delete").respond(200)
    await pool.probe()

    await pool.delete("gone")

    assert pool.holders("gone") == []
    assert pool.label("gone") == "other"
    assert pool.label("kept") == "kept:latest"


async def test_the_pools_own_pull_makes_the_next_unknown_name_ask_the_backends_again(
    pool: OllamaPool, backends: respx.MockRouter
) -> None:
    fleet = Backends(backends)
    fleet.has(A, "llama3.2:latest")
    await pool.probe()
    assert await pool.knows("newcomer") is False
    lists = fleet.has(A, "llama3.2:latest", "newcomer:latest")  # installed now, behind the pool's back
    asked = lists.call_count  # respx keeps a route's count when the route is given a new answer

    assert await pool.knows("newcomer") is False, "missing a moment ago: remembered, not asked again"
    assert lists.call_count == asked

    for url in (A, B):
        backends.post(f"{url}/api/pull").respond(
            200,
            headers={"content-type": "application/x-ndjson"},
            content=ndjson({"status": "pulling manifest"}, pull_progress(), {"status": "success"}),
        )
    pull = await pool.pull("newcomer")
    await pull.aclose()

    assert await pool.knows("newcomer") is True, "no caller told the pool: its pull did"
    assert pool.label("newcomer") == "newcomer:latest"
