"""Model lifecycle and server info with Minato as a real process."""

from __future__ import annotations

import httpx
import pytest

from tests.support.servers import Backend

pytestmark = pytest.mark.e2e


def test_loading_a_missing_model_without_pull_is_a_404(http: httpx.Client, backend: Backend) -> None:
    response = http.post("/load/no-such-model-anywhere:7b")

    assert response.status_code == 404


def test_loading_with_pull_pulls_then_loads(http: httpx.Client, standin: httpx.Client) -> None:
    standin.post("/_standin/reset")

    response = http.post("/load/tinyllama", params={"pull": "true", "keep_alive": "-1"})

    assert response.status_code == 200
    assert response.json()["loaded"] is True
    assert response.json()["running"]["expires_at"] == "forever"
    paths = [r["path"] for r in standin.get("/_standin/requests").json()]
    assert paths.index("/api/pull") < paths.index("/api/generate")
    assert "tinyllama:latest" in [m["name"] for m in http.get("/running").json()["running"]]
    http.post("/unload/tinyllama")


def test_a_loaded_model_shows_as_running_until_unloaded(http: httpx.Client, backend: Backend) -> None:
    loaded = http.post(f"/load/{backend.model}", params={"keep_alive": "10m"})
    running = [m["name"] for m in http.get("/running").json()["running"]]
    listed = {m["name"]: m["loaded"] for m in http.get("/models_list/").json()["models_list"]}
    unloaded = http.post(f"/unload/{backend.model}")

    assert loaded.status_code == 200
    assert loaded.json()["loaded"] is True
    assert 0 < loaded.json()["running"]["expires_in_seconds"] <= 600
    assert backend.model in running
    assert listed[backend.model] is True
    assert unloaded.json() == {"status": "unloaded", "model": backend.model}


def test_unloading_a_model_that_is_not_loaded_is_fine(http: httpx.Client, backend: Backend) -> None:
    http.post(f"/unload/{backend.model}")

    response = http.post(f"/unload/{backend.model}")

    assert response.status_code == 200


def test_deleting_a_missing_model_is_a_404(http: httpx.Client, backend: Backend) -> None:
    response = http.delete("/models/no-such-model-anywhere:7b")

    assert response.status_code == 404


def test_deleting_an_installed_model_removes_it(http: httpx.Client, standin: httpx.Client) -> None:
    assert http.post("/install/smollm:135m").status_code == 200

    deleted = http.delete("/models/smollm:135m")

    assert deleted.json() == {"status": "deleted", "model": "smollm:135m"}
    assert "smollm:135m" not in [m["name"] for m in http.get("/models_list/").json()["models_list"]]


def test_the_status_of_a_vision_model_lists_the_capability(http: httpx.Client, backend: Backend) -> None:
    if backend.vision_model is None:
        pytest.skip("no vision model configured for this backend")

    response = http.get(f"/status/{backend.vision_model}")

    assert response.status_code == 200
    assert response.json()["installed"] is True
    assert "vision" in response.json()["capabilities"]
    assert response.json()["context_length"] > 0


def test_server_info_reports_ollama_and_the_installed_models(http: httpx.Client, backend: Backend) -> None:
    body = http.get("/").json()

    assert body["service"] == "minato"
    assert body["ollama"]["reachable"] is True
    assert body["ollama"]["version"]
    assert backend.model in body["installed"]


def test_an_out_of_range_parameter_never_reaches_ollama(http: httpx.Client, backend: Backend) -> None:
    response = http.get(f"/{backend.model}", params={"message": "hi", "top_p": "2"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "top_p"]


def test_max_new_tokens_caps_the_answer(http: httpx.Client, backend: Backend) -> None:
    response = http.get(f"/{backend.model}", params={"message": "Write a long story.", "max_new_tokens": "3"})

    assert response.status_code == 200
    assert response.json()["done_reason"] == "length"
    assert response.json()["stats"]["eval_count"] <= 3
