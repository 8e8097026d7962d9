"""Generation parameters: ``keep_alive`` and model-name parsing, and every way the query string can be wrong."""

from __future__ import annotations

import json

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from minato.web.api import ROUTE_HANDLERS
from minato.web.params import MAX_MODEL_NAME
from minato.web.query import repeatable_parameters
from tests.support.payloads import chat_answer
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


async def test_an_unknown_query_parameter_is_a_422_and_nothing_goes_upstream(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "temprature": "0.5"})

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["query", "temprature"]
    assert item["type"] == "extra_forbidden"
    assert "temperature" in item["msg"]
    assert not route.called


async def test_every_unknown_query_parameter_is_reported(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "n_gpu": "5", "stream": "true"})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "n_gpu"], ["query", "stream"]]
    assert not route.called


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("num_ctx", "0", id="num_ctx-zero"),
        pytest.param("num_ctx", "2147483648", id="num_ctx-over-int32"),
        pytest.param("num_keep", "-2", id="num_keep-below-minus-one"),
        pytest.param("num_batch", "0", id="num_batch-zero"),
        pytest.param("temperature", "-1", id="temperature-negative"),
        pytest.param("temperature", "101", id="temperature-huge"),
        pytest.param("temperature", "nan", id="temperature-nan"),
        pytest.param("temperature", "inf", id="temperature-inf"),
        pytest.param("seed", str(2**64), id="seed-over-int64"),
        pytest.param("seed", "1.5", id="seed-fractional"),
        pytest.param("num_ctx", "abc", id="num_ctx-not-a-number"),
        pytest.param("numa", "maybe", id="numa-not-a-bool"),
        pytest.param("low_vram", "2", id="low_vram-not-a-bool"),
    ],
)
async def test_an_out_of_range_parameter_is_a_422_naming_it(
    client: Client, ollama: ServedOllama, name: str, value: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", name: value})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", name]]
    assert not route.called


@pytest.mark.parametrize(
    ("name", "value", "sent"),
    [
        pytest.param("num_keep", "-1", -1, id="num_keep-minus-one"),
        pytest.param("temperature", "0", 0.0, id="temperature-zero"),
        pytest.param("seed", "-5", -5, id="seed-negative"),
        pytest.param("num_ctx", "2147483647", 2147483647, id="num_ctx-int32-max"),
    ],
)
async def test_boundary_values_are_accepted_and_forwarded(
    client: Client, ollama: ServedOllama, name: str, value: str, sent: object
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", name: value})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["options"] == {name: sent}


@pytest.mark.parametrize("message", ["", " ", "\t\n "])
async def test_an_empty_or_blank_message_is_a_422(client: Client, ollama: ServedOllama, message: str) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": message})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "message"]]
    assert not route.called


@pytest.mark.parametrize("path", ["/llama3.2", "/stream/llama3.2"])
async def test_a_message_over_the_limit_is_a_422(client: Client, ollama: ServedOllama, path: str) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(path, params={"message": "x" * 1001})

    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["query", "message"]
    assert item["type"] == "string_too_long"
    assert "1000" in item["msg"]
    assert not route.called


async def test_a_message_at_the_limit_is_accepted(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "x" * 1000})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["messages"] == [{"role": "user", "content": "x" * 1000}]


async def test_a_system_prompt_over_the_limit_is_a_422(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "system_prompt": "s" * 1001})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "system_prompt"]]
    assert not route.called


@pytest.mark.parametrize("path", ["/llama3.2", "/stream/llama3.2"])
async def test_a_missing_message_is_a_422_of_type_missing(client: Client, ollama: ServedOllama, path: str) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(path)

    assert response.status_code == 422
    assert response.json() == {"detail": [{"loc": ["query", "message"], "msg": "field required", "type": "missing"}]}
    assert not route.called


@pytest.mark.parametrize("keep_alive", ["300x", "abc", "nan", "1e20", ""])
async def test_a_bad_keep_alive_is_a_422(client: Client, ollama: ServedOllama, keep_alive: str) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "keep_alive": keep_alive})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "keep_alive"]]
    assert not route.called


@pytest.mark.parametrize("path", ["/-rf", "/llama%203", "/a:b:c", "/stream/-rf", "/" + "a" * (MAX_MODEL_NAME + 1)])
async def test_an_invalid_model_name_is_a_422_on_the_path(client: Client, ollama: ServedOllama, path: str) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(path, params={"message": "hi"})

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["path", "model_name"]]
    assert not route.called


@pytest.mark.parametrize(
    "query",
    [
        "message=hi&seed=",
        "message=hi&temperature=%20",
        "message=hi&num_ctx=1e3",
        "message=hi&keep_alive=a&keep_alive=b",
        "message=hi&system_prompt=",
        "message=hi&numa=",
        "message=%FF%FE",
        "temperature=1",
        "message=hi&=x",
    ],
)
async def test_malformed_query_strings_are_never_a_500(client: Client, ollama: ServedOllama, query: str) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(f"/llama3.2?{query}")

    assert response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    if response.status_code == 422:
        assert not route.called


async def test_an_overflowing_keep_alive_is_a_422_and_never_reaches_ollama(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "keep_alive": "99999999999999999h"})

    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "loc": ["query", "keep_alive"],
                "msg": "is longer than the longest duration Ollama accepts (about 2,562,047 h)",
                "type": "value_error",
            }
        ]
    }
    assert not route.called


@pytest.mark.parametrize(
    ("method", "path", "query", "repeated"),
    [
        pytest.param("GET", "/llama3.2", "message=a&message=b", "message", id="generate-message"),
        pytest.param("GET", "/llama3.2", "message=a&temperature=0.1&temperature=0.9", "temperature", id="option"),
        pytest.param("GET", "/stream/llama3.2", "message=a&keep_alive=1m&keep_alive=2m", "keep_alive", id="stream"),
        pytest.param("POST", "/vision/gemma3", "message=a&message=b", "message", id="vision"),
        pytest.param("GET", "/chat", "limit=1&limit=2", "limit", id="chat"),
        pytest.param("POST", "/load/llama3.2", "keep_alive=1m&keep_alive=2m", "keep_alive", id="load"),
        pytest.param("POST", "/install/llama3.2", "stream=true&stream=false", "stream", id="install"),
        pytest.param("GET", "/status/llama3.2", "x=1&x=2", "x", id="status-unknown-parameter"),
        pytest.param("GET", "/models_list/", "x=1&x=2", "x", id="models-list"),
        pytest.param("GET", "/llama3.2", "message=a&%6Dessage=b", "message", id="escaped-twin"),
        pytest.param("GET", "/llama3.2", "message=a&temperature=0.1&temp%65rature=0.9", "temperature", id="escaped"),
    ],
)
async def test_a_single_value_parameter_given_twice_is_a_422_on_every_route(
    client: Client, ollama: ServedOllama, method: str, path: str, query: str, repeated: str
) -> None:
    anything = ollama.route(path__regex=r"^/api/(?!ps).*").respond(500)

    response = await client.request(method, f"{path}?{query}")

    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"loc": ["query", repeated], "msg": "was given more than once", "type": "value_error"}]
    }
    assert not anything.called


async def test_every_repeated_parameter_is_named(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2?message=a&seed=1&message=b&seed=2&top_k=3")

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "message"], ["query", "seed"]]
    assert not route.called


async def test_stop_may_repeat(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2?message=a&stop=x&stop=y")

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["options"]["stop"] == ["x", "y"]


def test_only_the_list_parameters_may_repeat(app: Litestar) -> None:
    # The handlers the app registered (copies of ROUTE_HANDLERS, which stay untouched).
    handlers = [handler for route in app.routes if isinstance(route, HTTPRoute) for handler in route.route_handlers]
    repeatable = {
        (method, path): set(repeatable_parameters(handler))
        for handler in handlers
        for path in handler.paths
        for method in handler.http_methods
    }

    assert len(repeatable) >= len(ROUTE_HANDLERS)
    assert {key: names for key, names in repeatable.items() if names} == {
        ("GET", "/{model_name:path}"): {"stop"},
        ("GET", "/stream/{model_name:path}"): {"stop"},
        ("POST", "/vision/{model_name:path}"): {"stop", "image_url"},
        ("POST", "/stream/vision/{model_name:path}"): {"stop", "image_url"},
    }
