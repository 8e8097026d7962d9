"""``GET /{model}``: the whole answer, what goes upstream, and how failures surface."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.payloads import chat_answer, not_found

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


async def test_answer_carries_response_model_done_reason_and_stats(client: Client, ollama: respx.MockRouter) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer("The sky is blue."))

    response = await client.get("/llama3.2", params={"message": "Why is the sky blue?"})

    assert response.status_code == 200
    body = response.json()
    assert body["response"] == "The sky is blue."
    assert body["model"] == "llama3.2"
    assert body["done_reason"] == "stop"
    assert body["stats"]["eval_count"] == 3
    assert body["stats"]["eval_duration"] == 115959084
    assert body["stats"]["tokens_per_second"] == pytest.approx(3 / 0.115959084, rel=1e-3)


async def test_only_the_message_goes_upstream_when_no_parameter_is_set(
    client: Client, ollama: respx.MockRouter
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    await client.get("/llama3.2", params={"message": "hi"})

    assert json.loads(route.calls.last.request.content) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


async def test_every_seed_parameter_is_translated_into_ollamas_request(
    client: Client, ollama: respx.MockRouter
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(
        "/llama3.2:1b",
        params={
            "message": "hi",
            "system_prompt": "Be brief.",
            "keep_alive": "1h30m",
            "numa": "true",
            "num_ctx": "4096",
            "num_keep": "5",
            "num_batch": "256",
            "low_vram": "false",
            "seed": "21",
            "temperature": "0.7",
        },
    )

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content) == {
        "model": "llama3.2:1b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "stream": False,
        "options": {
            "numa": True,
            "num_ctx": 4096,
            "num_keep": 5,
            "num_batch": 256,
            "low_vram": False,
            "seed": 21,
            "temperature": 0.7,
        },
        "keep_alive": "1h30m",
    }


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        pytest.param("300", 300, id="seconds-as-number"),
        pytest.param("2.5", 2.5, id="fractional-seconds"),
        pytest.param("0", 0, id="unload-at-once"),
        pytest.param("-1", -1, id="forever"),
        pytest.param("-3.5", -1, id="any-negative-is-forever"),
        pytest.param("5m", "5m", id="duration"),
        pytest.param("-1m", "-1m", id="negative-duration"),
    ],
)
async def test_keep_alive_reaches_ollama_in_a_form_it_accepts(
    client: Client, ollama: respx.MockRouter, given: str, sent: object
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "keep_alive": given})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["keep_alive"] == sent


async def test_integer_temperature_still_works_as_in_the_seed(client: Client, ollama: respx.MockRouter) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "temperature": "1"})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["options"] == {"temperature": 1.0}


@pytest.mark.parametrize(
    "model",
    ["llama3.2:1b", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "library/qwen3:0.6b"],
)
async def test_model_names_with_tags_and_slashes_reach_ollama_verbatim(
    client: Client, ollama: respx.MockRouter, model: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer(model=model))

    response = await client.get(f"/{model}", params={"message": "hi"})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["model"] == model


async def test_unknown_model_is_a_404_with_ollamas_reason(client: Client, ollama: respx.MockRouter) -> None:
    ollama.post("/api/chat").respond(404, json=not_found("nope"))

    response = await client.get("/nope", params={"message": "hi"})

    assert response.status_code == 404
    assert response.json() == {"detail": "model 'nope' not found"}


async def test_ollama_down_is_a_503_naming_its_url(client: Client, ollama: respx.MockRouter) -> None:
    route = ollama.post("/api/chat").mock(side_effect=httpx.ConnectError("All connection attempts failed"))

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert "http://ollama.test:11434" in response.json()["detail"]
    assert route.called
