"""Probes (``/health``, ``/ready``) and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.redis_server import RedisServer
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


async def test_health_answers_without_calling_ollama(client: Client, ollama: ServedOllama) -> None:
    anything = ollama.route().respond(500)

    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert not anything.called


async def test_ready_reports_ollamas_version(client: Client, ollama: ServedOllama) -> None:
    route = ollama.get("/api/version").respond(200, json={"version": "0.12.3"})

    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "ollama_url": ollama.url,
        "ollama_version": "0.12.3",
        "backends": [{"name": ollama.host, "url": ollama.url, "state": "up", "version": "0.12.3"}],
        "state": {"name": "memory", "status": "up"},
    }
    assert route.call_count == 1


async def test_ready_is_a_503_naming_the_url_when_ollama_is_down(client: Client, ollama: ServedOllama) -> None:
    ollama.down()

    response = await client.get("/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["ollama_url"] == ollama.url
    assert ollama.url in body["reason"]
    assert "ollama_version" not in body


async def test_ready_is_a_503_when_the_url_is_not_ollama(client: Client, ollama: ServedOllama) -> None:
    route = ollama.get("/api/version").respond(404, text="404 page not found")

    response = await client.get("/ready")

    assert response.status_code == 503
    assert "MINATO_OLLAMA_URL" in response.json()["reason"]
    assert route.called


async def test_head_health_answers_like_get_without_a_body(client: Client, ollama: ServedOllama) -> None:
    anything = ollama.route().respond(500)

    got = await client.get("/health")
    response = await client.head("/health")

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert not anything.called


@pytest.mark.parametrize(
    ("version", "status"),
    [
        pytest.param(httpx.Response(200, json={"version": "0.12.3"}), 200, id="ready"),
        pytest.param(httpx.ConnectError("All connection attempts failed"), 503, id="unreachable"),
        pytest.param(httpx.Response(404, text="404 page not found"), 503, id="not-ollama"),
    ],
)
async def test_head_ready_answers_like_get_without_a_body(
    client: Client, ollama: ServedOllama, version: httpx.Response | Exception, status: int
) -> None:
    route = ollama.get("/api/version").mock(side_effect=[version, version])
    if isinstance(version, httpx.ConnectError):
        ollama.down()

    got = await client.get("/ready")
    response = await client.head("/ready")

    assert response.status_code == got.status_code == status
    assert response.content == b""
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(got.content))
    assert route.call_count == (0 if isinstance(version, httpx.ConnectError) else 2)


async def test_head_probes_keep_their_guards(ollama: ServedOllama) -> None:
    ollama.get("/api/version").respond(200, json={"version": "0.12.3"})
    settings = Settings(
        ollama_url=ollama.url, api_keys=("user-key",), session_store="memory://", ollama_probe_interval=0
    )

    async with AsyncTestClient(app=create_app(settings)) as c:
        health = await c.head("/health")
        ready = await c.head("/ready")
        ready_with_key = await c.head("/ready", headers={"X-API-Key": "user-key"})

    assert health.status_code == 200
    assert ready.status_code == 401
    assert ready_with_key.status_code == 200


async def test_ready_says_whether_the_shared_state_answers_and_is_a_503_while_it_does_not(
    ollama: ServedOllama, redis_server: RedisServer
) -> None:
    ollama.get("/api/version").respond(200, json={"version": "0.12.3"})
    settings = Settings(ollama_url=ollama.url, redis_url=redis_server.url, redis_timeout=0.5, ollama_probe_interval=0)

    async with AsyncTestClient(app=create_app(settings)) as c:
        up = await c.get("/ready")
        redis_server.stop()
        down = await c.get("/ready")
        down_head = await c.head("/ready")
        metrics = (await c.get("/metrics")).text
        redis_server.start()
        back = await c.get("/ready")

    sentence = f"the shared state (Redis at 127.0.0.1:{redis_server.port}) cannot be reached; try again shortly"
    assert (up.status_code, up.json()["state"]) == (200, {"name": "redis", "status": "up"})
    assert (down.status_code, down_head.status_code) == (503, 503)
    assert down.json() == {
        "status": "unavailable",
        "ollama_url": ollama.url,
        "ollama_version": "0.12.3",
        "reason": sentence,
        "backends": [{"name": ollama.host, "url": ollama.url, "state": "up", "version": "0.12.3"}],
        "state": {"name": "redis", "status": "down", "reason": sentence},
    }
    assert "minato_redis_up 0.0" in metrics
    assert (back.status_code, back.json()["state"]["status"]) == (200, "up")


@pytest.fixture(name="openapi")
async def fx_openapi(client: Client) -> dict[str, Any]:
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def parameters(openapi: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    return {param["name"]: param for param in openapi["paths"][path]["get"]["parameters"]}


async def test_openapi_lists_every_route(openapi: dict[str, Any]) -> None:
    assert set(openapi["paths"]) >= {
        "/{model_name}",
        "/stream/{model_name}",
        "/vision/{model_name}",
        "/stream/vision/{model_name}",
        "/install/{model_name}",
        "/health",
        "/ready",
    }
    assert openapi["info"]["title"] == "Minato"


@pytest.mark.parametrize("path", ["/{model_name}", "/stream/{model_name}"])
async def test_openapi_documents_the_generation_parameters(openapi: dict[str, Any], path: str) -> None:
    params = parameters(openapi, path)

    assert params["message"]["in"] == "query"
    assert params["message"]["required"] is True
    assert "message" in params["message"]["description"]
    assert "5m" in params["keep_alive"]["description"]
    assert params["temperature"]["in"] == "query"
    assert params["temperature"]["description"]
    assert params["model_name"]["in"] == "path"
    assert set(params) >= {"num_ctx", "num_keep", "num_batch", "seed", "system_prompt"}


@pytest.mark.parametrize("name", ["numa", "low_vram"])
async def test_openapi_says_ollama_ignores_numa_and_low_vram(openapi: dict[str, Any], name: str) -> None:
    description = parameters(openapi, "/{model_name}")[name]["description"]

    assert "ignores" in description


@pytest.mark.parametrize("path", ["/{model_name}", "/stream/{model_name}"])
async def test_openapi_documents_the_error_responses(openapi: dict[str, Any], path: str) -> None:
    responses = openapi["paths"][path]["get"]["responses"]

    assert set(responses) >= {"200", "404", "422", "502", "503", "504"}
    assert "model" in responses["404"]["description"]


async def test_openapi_documents_the_vision_limits(openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/vision/{model_name}"]["post"]["responses"]

    assert set(responses) >= {"200", "400", "404", "413", "422", "502", "503", "504"}


async def test_docs_serve_html(client: Client) -> None:
    response = await client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Minato</title>" in response.text


async def test_ready_is_a_503_when_the_shared_state_does_not_answer(client: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/version").respond(200, json={"version": "0.12.3"})

    class Down:
        name = "redis"

        async def ping(self) -> str | None:
            return "the shared state (Redis at redis:6379) cannot be reached"

    runtime = client.app.state.runtime_slot.runtime
    healthy = runtime.state
    object.__setattr__(runtime, "state", healthy._replace(health=Down()))
    try:
        response = await client.get("/ready")
    finally:
        object.__setattr__(runtime, "state", healthy)

    assert response.status_code == 503
    body = response.json()
    reason = "the shared state (Redis at redis:6379) cannot be reached"
    assert body["state"] == {"name": "redis", "status": "down", "reason": reason}
    assert body["reason"] == reason
    assert [b["state"] for b in body["backends"]] == ["up"], "the backends are fine; the state is not"
