"""The stand-in plays one backend of a pool: the models it has (``--models``), the ones it has loaded
(``--loaded``), and a full queue (``--busy`` or ``POST /_standin/busy``), each answered as a real
Ollama in that state would. Expected strings come from ``/work/shared/reference/ollama-api.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import ollama
import pytest

from tests.support.standin.process import StandInProcess

pytestmark = pytest.mark.e2e

StandIns = Callable[..., StandInProcess]
BUSY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def pair(standin_factory: StandIns) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Backend A has llama3.2 (loaded) and qwen3:0.6b; backend B has only tinyllama, nothing loaded."""
    a = standin_factory("--models", "llama3.2,qwen3:0.6b", "--loaded", "llama3.2")
    b = standin_factory("--models", "tinyllama")
    with httpx.Client(base_url=a.url, timeout=10) as ca, httpx.Client(base_url=b.url, timeout=10) as cb:
        yield ca, cb


def _names(client: httpx.Client, path: str) -> list[str]:
    return [m["name"] for m in client.get(path).json()["models"]]


def test_tags_list_exactly_the_models_given_in_the_order_given(pair: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = pair
    assert _names(a, "/api/tags") == ["llama3.2:latest", "qwen3:0.6b"]
    assert _names(b, "/api/tags") == ["tinyllama:latest"]
    assert [m["id"] for m in a.get("/v1/models").json()["data"]] == ["llama3.2:latest", "qwen3:0.6b"]
    tags = a.get("/api/tags").json()["models"]
    assert tags[0]["modified_at"] > tags[1]["modified_at"]
    assert tags[1]["capabilities"] == ["completion", "tools", "thinking"]


def test_ps_lists_the_loaded_models_with_the_default_keep_alive(pair: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = pair
    started = datetime.now(UTC)
    with ollama.Client(host=str(a.base_url)) as client:
        ps = client.ps()
    assert [m.model for m in ps.models] == ["llama3.2:latest"]
    entry = ps.models[0]
    assert entry.expires_at is not None
    # Loaded before this test started, for Ollama's default 5 minutes.
    assert started < entry.expires_at <= started + timedelta(minutes=5)
    assert (entry.size_vram, entry.context_length) == (entry.size, 4096)
    assert b.get("/api/ps").json() == {"models": []}


def test_a_generation_on_a_loaded_model_keeps_it_loaded(pair: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = pair
    r = a.post("/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False})
    assert r.status_code == 200
    assert r.json()["done_reason"] == "stop"
    assert _names(a, "/api/ps") == ["llama3.2:latest"]
    r = b.post("/api/generate", json={"model": "tinyllama", "prompt": "hi", "stream": False})
    assert r.status_code == 200
    assert _names(b, "/api/ps") == ["tinyllama:latest"]


def test_show_answers_for_a_given_model_and_404s_for_any_other(pair: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = pair
    shown = a.post("/api/show", json={"model": "qwen3:0.6b"})
    assert shown.status_code == 200
    assert shown.json()["capabilities"] == ["completion", "tools", "thinking"]
    r = b.post("/api/show", json={"model": "llama3.2"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2:latest' not found"})


def test_a_model_not_given_is_not_found_on_every_door_in_ollamas_words(pair: tuple[httpx.Client, httpx.Client]) -> None:
    _, b = pair
    r = b.post("/api/chat", json={"model": "llama3.2", "messages": HI})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2' not found"})
    r = b.post("/api/generate", json={"model": "llama3.2", "prompt": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2' not found"})
    r = b.post("/api/embed", json={"model": "all-minilm", "input": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "all-minilm" not found, try pulling it first'})
    r = b.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
    assert r.status_code == 404
    assert r.content == (
        b'{"error":{"message":"model \'llama3.2\' not found","type":"not_found_error","param":null,"code":null}}\n'
    )
    r = b.get("/v1/models/llama3.2")
    assert r.status_code == 404
    r = b.request("DELETE", "/api/delete", json={"model": "llama3.2"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2' not found"})
    r = b.post("/api/copy", json={"source": "llama3.2", "destination": "mine"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "llama3.2" not found'})


def test_a_loaded_model_deleted_is_gone_from_tags_stays_in_ps_until_it_expires_and_is_a_404(
    pair: tuple[httpx.Client, httpx.Client],
) -> None:
    """What ``ollama rm`` (``DELETE /api/delete``) of a loaded model leaves: the manifest is gone, so
    every handler that reads it says "not found" (Ollama's ``GetModel``), while the runner stays in
    the scheduler, and in ``/api/ps``, until its keep-alive runs out."""
    a, _ = pair
    assert a.post("/api/generate", json={"model": "qwen3:0.6b", "keep_alive": "1s"}).status_code == 200
    assert sorted(_names(a, "/api/ps")) == ["llama3.2:latest", "qwen3:0.6b"]

    for model in ("llama3.2", "qwen3:0.6b"):
        assert a.request("DELETE", "/api/delete", json={"model": model}).status_code == 200

    assert _names(a, "/api/tags") == []
    assert sorted(_names(a, "/api/ps")) == ["llama3.2:latest", "qwen3:0.6b"]
    r = a.post("/api/chat", json={"model": "llama3.2", "messages": HI})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2' not found"})
    r = a.post("/api/generate", json={"model": "llama3.2", "prompt": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2' not found"})
    r = a.post("/api/embed", json={"model": "llama3.2", "input": "hi"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "llama3.2" not found, try pulling it first'})
    r = a.post("/api/show", json={"model": "llama3.2"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'llama3.2:latest' not found"})
    r = a.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
    assert (r.status_code, r.json()["error"]["type"]) == (404, "not_found_error")
    assert r.json()["error"]["message"] == "model 'llama3.2' not found"
    r = a.post("/v1/messages", json={"model": "llama3.2", "max_tokens": 8, "messages": HI})
    assert (r.status_code, r.json()["error"]) == (
        404,
        {"type": "not_found_error", "message": "model 'llama3.2' not found"},
    )
    # A refused generation does not touch the runner: still listed, the default keep-alive's until expiry.
    assert "llama3.2:latest" in _names(a, "/api/ps")
    deadline = time.monotonic() + 30
    while "qwen3:0.6b" in _names(a, "/api/ps") and time.monotonic() < deadline:
        time.sleep(0.1)  # its one second of keep-alive runs out
    assert _names(a, "/api/ps") == ["llama3.2:latest"]


def test_with_models_given_the_dynamic_models_exist_only_when_listed(standin_factory: StandIns) -> None:
    plain = standin_factory("--models", "llama3.2")
    listed = standin_factory("--models", "standin/tokens:3")
    body = {"model": "standin/tokens:3", "prompt": "hi", "stream": False}
    r = httpx.post(f"{plain.url}/api/generate", json=body)
    assert (r.status_code, r.json()) == (404, {"error": "model 'standin/tokens:3' not found"})
    r = httpx.post(f"{listed.url}/api/generate", json=body)
    assert r.status_code == 200
    assert r.json()["eval_count"] == 3
    assert [m["name"] for m in httpx.get(f"{listed.url}/api/tags").json()["models"]] == ["standin/tokens:3"]


def test_no_models_is_an_empty_ollama(standin_factory: StandIns) -> None:
    empty = standin_factory("--models", "")
    with httpx.Client(base_url=empty.url, timeout=10) as http:
        assert http.get("/api/tags").json() == {"models": []}
        assert http.get("/api/ps").json() == {"models": []}
        assert http.get("/v1/models").json() == {"object": "list", "data": None}
        pulled = http.post("/api/pull", json={"model": "tinyllama", "stream": False})
        assert (pulled.status_code, pulled.json()) == (200, {"status": "success"})
        assert _names(http, "/api/tags") == ["tinyllama:latest"]


def test_busy_makes_every_request_that_needs_a_runner_a_503_with_ollamas_body(
    pair: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = pair
    assert a.get("/_standin/busy").json() == {"busy": False}
    assert a.post("/_standin/busy", json={"busy": True}).json() == {"busy": True}
    for path, body in (
        ("/api/chat", {"model": "llama3.2", "messages": HI}),
        ("/api/generate", {"model": "qwen3:0.6b", "prompt": "hi", "stream": False}),
        ("/api/generate", {"model": "qwen3:0.6b"}),  # a load needs the scheduler too
    ):
        r = a.post(path, json=body)
        assert (r.status_code, r.content) == (503, BUSY), path
        assert r.headers["content-type"] == "application/json; charset=utf-8"
    r = a.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI, "stream": True})
    assert r.status_code == 503
    assert r.json()["error"] == {
        "message": "server busy, please try again.  maximum pending requests exceeded",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    # What needs no runner still answers, and a missing model is still a 404 first.
    assert a.get("/api/tags").status_code == 200
    assert a.post("/api/show", json={"model": "llama3.2"}).status_code == 200
    assert a.post("/api/chat", json={"model": "tinyllama", "messages": HI}).status_code == 404
    assert a.post("/_standin/busy", json={"busy": False}).json() == {"busy": False}
    assert a.post("/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False}).status_code == 200


def test_the_busy_control_refuses_anything_but_a_boolean(pair: tuple[httpx.Client, httpx.Client]) -> None:
    a, _ = pair
    for bad in (b"", b"{", b'{"busy": 1}', b"[true]"):
        r = a.post("/_standin/busy", content=bad)
        assert r.status_code == 400, bad
    assert a.get("/_standin/busy").json() == {"busy": False}
    assert a.delete("/_standin/busy").status_code == 405


def test_a_stand_in_started_busy_is_busy_until_told_otherwise(standin_factory: StandIns) -> None:
    busy = standin_factory("--models", "llama3.2", "--busy")
    with httpx.Client(base_url=busy.url, timeout=10) as http:
        assert http.post("/api/chat", json={"model": "llama3.2", "messages": HI}).content == BUSY
        http.post("/_standin/busy", json={"busy": False})
        assert http.post("/api/chat", json={"model": "llama3.2", "messages": HI}).status_code == 200
        http.post("/_standin/reset")
        assert http.get("/_standin/busy").json() == {"busy": True}


def test_reset_returns_to_the_models_and_the_loaded_ones_given_at_start(
    pair: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = pair
    a.post("/api/pull", json={"model": "tinyllama", "stream": False})
    a.request("DELETE", "/api/delete", json={"model": "qwen3:0.6b"})
    a.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})  # unload
    a.post("/_standin/busy", json={"busy": True})
    assert _names(a, "/api/tags") == ["tinyllama:latest", "llama3.2:latest"]
    assert _names(a, "/api/ps") == []
    assert [r["path"] for r in a.get("/_standin/requests").json()][:3] == ["/api/pull", "/api/delete", "/api/generate"]
    assert a.post("/_standin/reset").json() == {"reset": True}
    assert _names(a, "/api/tags") == ["llama3.2:latest", "qwen3:0.6b"]
    assert _names(a, "/api/ps") == ["llama3.2:latest"]
    assert a.get("/_standin/busy").json() == {"busy": False}
    assert a.get("/_standin/requests").json()[0]["path"] == "/api/tags"


def test_requests_are_recorded_per_backend(pair: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = pair
    a.delete("/_standin/requests")
    b.delete("/_standin/requests")
    b.post("/api/chat", json={"model": "tinyllama", "messages": HI, "stream": False})
    assert a.get("/_standin/requests").json() == []
    [record] = b.get("/_standin/requests").json()
    assert (record["path"], record["body"]["model"]) == ("/api/chat", "tinyllama")


def test_an_unknown_or_unloadable_model_stops_the_stand_in_from_starting(standin_factory: StandIns) -> None:
    with pytest.raises(RuntimeError, match="no model 'llama9' in its catalogue"):
        standin_factory("--models", "llama3.2,llama9")
    with pytest.raises(RuntimeError, match="'tinyllama' is not installed"):
        standin_factory("--models", "llama3.2", "--loaded", "tinyllama")


def test_one_backend_killed_mid_test_refuses_connections_while_the_other_serves(standin_factory: StandIns) -> None:
    a = standin_factory("--models", "llama3.2")
    b = standin_factory("--models", "llama3.2")
    assert a.url != b.url
    a.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{a.url}/api/tags", timeout=2)
    assert httpx.get(f"{b.url}/api/tags", timeout=2).status_code == 200
    b.stop()
    b.stop()  # idempotent, and the fixture stops both again at the end
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{b.url}/api/tags", timeout=2)
