"""A pool of Ollama backends through Minato's routes and the doors: routing, failover, merged lists,
fleet operations. Each backend is a stand-in served on its own loopback port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import ndjson, not_found, pull_progress
from tests.support.pools import A, B, C, Fleet, fx_fleet, fx_pool_settings  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]


@pytest.fixture(name="pool_client")
async def fx_pool_client(pool_settings: Settings, fleet: Fleet) -> AsyncIterator[Client]:
    app = create_app(pool_settings)  # Minato's own transport, to each backend's served port
    async with AsyncTestClient(app=app) as client:
        yield client


# -- routing --------------------------------------------------------------------------------------


async def test_a_model_only_one_backend_has_goes_only_there(pool_client: Client, fleet: Fleet) -> None:
    fleet.has(B, installed=("qwen3",))

    answers = [await pool_client.get("/qwen3", params={"message": "hi"}) for _ in range(4)]

    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.json()["response"] == f"from {B}" for a in answers)
    assert fleet.served_by() == {A: 0, B: 4, C: 0}


# -- a model deleted behind Minato's back ----------------------------------------------------------


async def test_a_model_no_backend_has_gets_ollamas_own_404(pool_client: Client, fleet: Fleet) -> None:
    fleet[A].post("/api/chat").respond(404, json={"error": "model 'llama9' not found"})
    for url in (A, B, C):
        fleet[url].post("/api/show").respond(404, json=not_found("llama9"))

    native = await pool_client.post("/api/chat", json={"model": "llama9", "messages": []})
    own = await pool_client.get("/llama9", params={"message": "hi"})

    assert native.status_code == 404
    assert native.json() == {"error": "model 'llama9' not found"}
    assert own.status_code == 404


async def test_every_backend_down_is_a_503(pool_client: Client, fleet: Fleet) -> None:
    for url in (A, B, C):
        fleet.has(url, installed=("llama3.2",))
        fleet.down(url)

    own = await pool_client.get("/llama3.2", params={"message": "hi"})
    native = await pool_client.post("/api/chat", json={"model": "llama3.2", "messages": [], "stream": False})
    ready = await pool_client.get("/ready")

    assert own.status_code == 503
    assert native.status_code == 503
    assert "error" in native.json()
    assert ready.status_code == 503
    assert [b["state"] for b in ready.json()["backends"]] == ["down", "down", "down"]


async def test_ready_lists_every_backend_and_is_200_while_one_is_up(pool_client: Client, fleet: Fleet) -> None:
    fleet.down(A)
    fleet.down(C)

    ready = await pool_client.get("/ready")

    assert ready.status_code == 200
    states = {b["name"]: b["state"] for b in ready.json()["backends"]}
    assert states == {fleet.name[A]: "down", fleet.name[B]: "up", fleet.name[C]: "down"}
    reasons = {b["name"]: b.get("reason") for b in ready.json()["backends"]}
    assert reasons[fleet.name[A]] == f"Ollama is unreachable at {fleet.url[A]}: the connection was refused"
    # aiohttp's own words for the refusal ("Cannot connect to host ... [Connect call failed ...]") are logged only.
    assert "Cannot connect" not in ready.text, "Minato's sentences, not the library's"
    assert "Connect call failed" not in ready.text, "Minato's sentences, not the library's"


# -- the fleet as one -----------------------------------------------------------------------------


async def test_model_lists_merge_every_backend_each_model_once(pool_client: Client, fleet: Fleet) -> None:
    fleet.has(A, installed=("llama3.2", "qwen3"), loaded=("qwen3",))
    fleet.has(B, installed=("llama3.2",), loaded=("llama3.2",))
    fleet.has(C, installed=("gemma3",))

    tags = await pool_client.get("/api/tags")
    ps = await pool_client.get("/api/ps")
    own = await pool_client.get("/models_list/")
    running = await pool_client.get("/running")

    assert sorted(m["name"] for m in tags.json()["models"]) == ["gemma3", "llama3.2", "qwen3"]
    assert sorted((m["name"], m["backend"]) for m in ps.json()["models"]) == [
        ("llama3.2", fleet.name[B]),
        ("qwen3", fleet.name[A]),
    ]
    backends = {m["name"]: m["backends"] for m in own.json()["models_list"]}
    assert backends == {
        "llama3.2": [fleet.name[A], fleet.name[B]],
        "qwen3": [fleet.name[A]],
        "gemma3": [fleet.name[C]],
    }
    assert sorted((m["name"], m["backend"]) for m in running.json()["running"]) == [
        ("llama3.2", fleet.name[B]),
        ("qwen3", fleet.name[A]),
    ]


async def test_install_pulls_onto_every_reachable_backend_and_says_which_line_is_whose(
    pool_client: Client, fleet: Fleet
) -> None:
    fleet.down(C)
    body = ndjson({"status": "pulling manifest"}, pull_progress(completed=100), {"status": "success"})
    pulls = {url: fleet[url].post("/api/pull").respond(200, content=body) for url in (A, B, C)}

    response = await pool_client.post("/install/llama3.2", params={"stream": "true"})

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [pulls[u].called for u in (A, B, C)] == [True, True, False]
    assert {line.get("backend") for line in lines[:-1]} == {fleet.name[A], fleet.name[B]}
    assert lines[-1] == {"status": "success"}, "one success, once both succeeded"
    assert sum(1 for line in lines if line["status"] == "success") == 1


async def test_install_onto_one_named_backend_and_an_unknown_name_is_a_422(pool_client: Client, fleet: Fleet) -> None:
    body = ndjson({"status": "pulling manifest"}, {"status": "success"})
    pulls = {url: fleet[url].post("/api/pull").respond(200, content=body) for url in (A, B, C)}

    one = await pool_client.post("/install/llama3.2", params={"backend": fleet.name[B]})
    unknown = await pool_client.post("/install/llama3.2", params={"backend": "elsewhere:11434"})

    assert one.status_code == 200
    assert [pulls[u].call_count for u in (A, B, C)] == [0, 1, 0]
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["query", "backend"]


async def test_the_native_pull_goes_to_every_backend_with_one_success(pool_client: Client, fleet: Fleet) -> None:
    body = ndjson({"status": "pulling manifest"}, {"status": "success"})
    for url in (A, B, C):
        fleet[url].post("/api/pull").respond(200, content=body, headers={"content-type": "application/x-ndjson"})

    response = await pool_client.post("/api/pull", json={"model": "llama3.2"})

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert sorted(line["backend"] for line in lines[:-1]) == sorted(fleet.name.values())
    assert lines[-1] == {"status": "success"}


async def test_a_whole_pull_answers_once_every_backend_finished(pool_client: Client, fleet: Fleet) -> None:
    pulls = {url: fleet[url].post("/api/pull").respond(200, json={"status": "success"}) for url in (A, B, C)}
    fleet.down(C)  # C is down: not asked

    response = await pool_client.post("/api/pull", json={"model": "llama3.2", "stream": False})

    assert (response.status_code, response.json()) == (200, {"status": "success"})
    assert [pulls[u].call_count for u in (A, B, C)] == [1, 1, 0]


async def test_a_backend_refusing_a_streamed_pull_is_its_error_line_and_there_is_no_success(
    pool_client: Client, fleet: Fleet
) -> None:
    body = ndjson({"status": "pulling manifest"}, {"status": "success"})
    for url in (A, B):
        fleet[url].post("/api/pull").respond(200, content=body, headers={"content-type": "application/x-ndjson"})
    fleet[C].post("/api/pull").respond(500, text="disk full")

    response = await pool_client.post("/api/pull", json={"model": "llama3.2"})

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert {"backend": fleet.name[C], "error": "disk full"} in lines
    assert {"status": "success"} not in lines, "not every backend succeeded"
    pulling = sorted(line["backend"] for line in lines if line.get("status") == "pulling manifest")
    assert pulling == sorted((fleet.name[A], fleet.name[B]))


async def test_delete_removes_the_model_from_every_backend_that_has_it(pool_client: Client, fleet: Fleet) -> None:
    fleet.has(A, installed=("llama3.2",))
    fleet.has(C, installed=("llama3.2",))
    deletes = {url: fleet[url].delete("/api/delete").respond(200) for url in (A, B, C)}

    own = await pool_client.delete("/models/llama3.2")
    native = await pool_client.request("DELETE", "/api/delete", json={"model": "llama3.2"})

    assert own.status_code == 200
    assert native.status_code == 200
    assert [deletes[u].call_count for u in (A, B, C)] == [2, 0, 2]


async def test_unload_unloads_everywhere_and_load_goes_to_the_named_backend(pool_client: Client, fleet: Fleet) -> None:
    for url in (A, B, C):
        fleet.has(url, installed=("llama3.2",))
    fleet.has(B, installed=("llama3.2",), loaded=("llama3.2",))
    generates = {url: fleet[url].post("/api/generate").respond(200, json={"done": True}) for url in (A, B, C)}

    unloaded = await pool_client.post("/unload/llama3.2")
    unloads = [generates[u].call_count for u in (A, B, C)]
    loaded = await pool_client.post("/load/llama3.2", params={"backend": fleet.name[C]})

    assert unloaded.status_code == 200
    assert unloads == [1, 1, 1]
    assert loaded.status_code == 200
    assert loaded.json()["backend"] == fleet.name[C]
    assert generates[C].call_count == 2


async def test_a_door_generation_routes_like_minatos_own_routes(pool_client: Client, fleet: Fleet) -> None:
    fleet.has(C, installed=("qwen3",))

    native = await pool_client.post("/api/chat", json={"model": "qwen3", "messages": [], "stream": False})

    assert native.status_code == 200
    assert fleet.served_by() == {A: 0, B: 0, C: 1}


async def test_backend_metrics_are_labelled_by_the_configured_backends_only(pool_client: Client, fleet: Fleet) -> None:
    fleet.has(B, installed=("qwen3",))
    await pool_client.get("/qwen3", params={"message": "hi"})

    text = (await pool_client.get("/metrics")).text

    assert f'minato_backend_requests_total{{backend="{fleet.name[B]}"}}' in text
    labels = {line.split('backend="')[1].split('"')[0] for line in text.splitlines() if 'backend="' in line}
    assert labels <= set(fleet.name.values())


async def test_the_request_log_line_names_the_backend_that_answered(pool_client: Client, fleet: Fleet) -> None:
    fleet.has(C, installed=("qwen3",))

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await pool_client.get("/qwen3", params={"message": "hi"})

    lines = [line for line in logs if line["event"] == "request"]
    assert [line.get("backend") for line in lines] == [fleet.name[C]]
