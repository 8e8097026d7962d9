"""Every failure is JSON with the honest status: Ollama's answers, routing errors, and bad input."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import chat_answer, ndjson
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.mark.parametrize(
    ("upstream", "status", "detail"),
    [
        pytest.param(
            httpx.Response(404, json={"error": "model 'nope' not found"}),
            404,
            "model 'nope' not found",
            id="404-unknown-model",
        ),
        pytest.param(
            httpx.Response(404, text="404 page not found"),
            502,
            "Ollama answered 404 (404 page not found); is MINATO_OLLAMA_URL an Ollama server?",
            id="404-not-ollama",
        ),
        pytest.param(
            httpx.Response(400, json={"error": '"bert" does not support chat'}),
            400,
            '"bert" does not support chat',
            id="400-rejected",
        ),
        pytest.param(httpx.Response(503, json={"error": BUSY}), 503, BUSY, id="503-busy"),
        pytest.param(httpx.Response(429, json={"error": BUSY}), 503, BUSY, id="429-busy"),
        pytest.param(
            httpx.Response(500, json={"error": "model runner has unexpectedly stopped"}),
            502,
            "Ollama answered 500: model runner has unexpectedly stopped",
            id="500-runner-died",
        ),
        pytest.param(
            httpx.Response(500, json={"error": 'option "num_ctx" must be of type integer'}),
            502,
            'Ollama answered 500: option "num_ctx" must be of type integer',
            id="500-option-type",
        ),
        pytest.param(httpx.Response(502, text=""), 502, "Ollama answered 502", id="502-empty"),
        pytest.param(
            httpx.Response(500, text="<html>oops</html>"), 502, "Ollama answered 500: <html>oops</html>", id="html"
        ),
        pytest.param(
            httpx.Response(200, json={"error": "unexpected EOF"}), 502, "Ollama failed: unexpected EOF", id="200-error"
        ),
    ],
)
@pytest.mark.parametrize("path", ["/llama3.2", "/stream/llama3.2"])
async def test_ollamas_answer_becomes_the_honest_status_and_detail(
    client: Client, ollama: ServedOllama, upstream: httpx.Response, status: int, detail: str, path: str
) -> None:
    if path.startswith("/stream") and upstream.status_code == 200:
        upstream = httpx.Response(200, content=ndjson(json.loads(upstream.content)))
    route = ollama.post("/api/chat").mock(return_value=upstream)

    response = await client.get(path, params={"message": "hi"})

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}
    assert json.loads(route.calls.last.request.content)["stream"] is True  # whole answers are streamed too


async def test_busy_carries_retry_after(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(503, json={"error": BUSY})

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert route.called


async def test_an_empty_403_explains_ollamas_host_guard(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(403)

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 502
    assert "Host" in response.json()["detail"]
    assert route.called


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        pytest.param("refused", 503, id="refused"),
        pytest.param("silent", 504, id="read-timeout"),
        pytest.param("dropped", 502, id="dropped"),
    ],
)
async def test_transport_failures_become_honest_statuses(
    settings: Settings, ollama: ServedOllama, failure: str, status: int
) -> None:
    # Real failures on loopback; a connect timeout and a reset, which loopback cannot cause, are
    # told through the transport seam in test_error_sentences.py.
    route = ollama.post("/api/chat")
    if failure == "refused":
        ollama.down()
    elif failure == "silent":
        route.mock(side_effect=ollama.stall())
    else:
        route.mock(side_effect=httpx.RemoteProtocolError("Server disconnected"))
    app = create_app(msgspec.structs.replace(settings, first_token_timeout=0.2))

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)
    assert route.called == (failure != "refused")


async def test_the_wrong_method_is_a_json_405(client: Client) -> None:
    response = await client.post("/health")

    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "this route does not take POST"}
    assert "GET" in response.headers["allow"]


async def test_a_route_that_does_not_exist_is_a_json_404(client: Client, ollama: ServedOllama) -> None:
    anything = ollama.route().respond(500)

    response = await client.get("/stream/")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "no such route"}
    assert not anything.called


async def test_a_post_to_a_generate_path_without_a_body_is_a_json_422(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/llama3.2")

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert not route.called


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        pytest.param("GET", "/llama3.2", {}, id="no-message"),
        pytest.param("GET", "/llama3.2?message=hi&num_ctx=x", {}, id="bad-int"),
        pytest.param("GET", "/llama3.2?message=hi&seed=99999999999999999999999", {}, id="huge-int"),
        pytest.param("GET", "/llama3.2?message=hi&temperature=1e400", {}, id="float-overflow"),
        pytest.param("GET", "/llama3.2?message=hi&keep_alive=9e99", {}, id="huge-keep-alive"),
        pytest.param("GET", "/llama3.2?message=%F0%28%8C%28", {}, id="invalid-utf8"),
        pytest.param("GET", "/%00?message=hi", {}, id="nul-model"),
        pytest.param("GET", "/stream/a%20b?message=hi", {}, id="space-model"),
        pytest.param("POST", "/vision/gemma3?message=hi", {"content": b"\x00" * 10}, id="vision-junk"),
        pytest.param(
            "POST",
            "/vision/gemma3?message=hi",
            {"content": b"junk", "headers": {"content-type": "multipart/form-data; boundary="}},
            id="vision-empty-boundary",
        ),
        pytest.param("POST", "/install/?stream=maybe", {}, id="install-no-model"),
        pytest.param("POST", "/install/llama3.2?stream=maybe", {}, id="install-bad-flag"),
        pytest.param("GET", "/models_list/?x=1", {}, id="list-with-junk"),
    ],
)
async def test_bad_input_is_never_a_500(
    client: Client, ollama: ServedOllama, method: str, path: str, kwargs: dict[str, object]
) -> None:
    ollama.post("/api/show").respond(200, json={"capabilities": ["completion", "vision"]})
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    pull = ollama.post("/api/pull").respond(200, content=ndjson({"status": "success"}))
    ollama.get("/api/tags").respond(200, json={"models": []})

    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    assert 400 <= response.status_code < 500 or response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    if response.status_code != 200:
        assert "detail" in response.json()
        assert not chat.called
        assert not pull.called
