"""``GET /{model}``: the whole answer, what goes upstream, and how failures surface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.upstream.pool.inventory import MIN_REFRESH_SECONDS, SHOW_LOOKUPS_PER_SECOND
from tests.support.payloads import catalogue, chat_answer, not_found, show
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


async def test_answer_carries_response_model_done_reason_and_stats(client: Client, ollama: ServedOllama) -> None:
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


async def test_only_the_message_goes_upstream_when_no_parameter_is_set(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    await client.get("/llama3.2", params={"message": "hi"})

    assert json.loads(route.calls.last.request.content) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,  # whole answers are streamed and put together by Minato
    }


async def test_every_seed_parameter_is_translated_into_ollamas_request(client: Client, ollama: ServedOllama) -> None:
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
        "stream": True,
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
    client: Client, ollama: ServedOllama, given: str, sent: object
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "keep_alive": given})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["keep_alive"] == sent


async def test_integer_temperature_still_works_as_in_the_seed(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "temperature": "1"})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["options"] == {"temperature": 1.0}


@pytest.mark.parametrize(
    "model",
    ["llama3.2:1b", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "library/qwen3:0.6b"],
)
async def test_model_names_with_tags_and_slashes_reach_ollama_verbatim(
    client: Client, ollama: ServedOllama, model: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer(model=model))

    response = await client.get(f"/{model}", params={"message": "hi"})

    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["model"] == model


async def test_a_model_ollama_does_not_list_is_a_404_before_anything_is_asked(
    client: Client, ollama: ServedOllama
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.3", params={"message": "hi"})

    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "model 'llama3.3' not found" in detail
    assert "llama3.2:latest" in detail, "a close installed name is suggested"
    assert not chat.called


async def test_a_listed_model_that_ollama_no_longer_has_is_a_404_with_ollamas_reason(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(404, json=not_found("llama3.2"))

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 404
    assert response.json() == {"detail": "model 'llama3.2' not found"}


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        pytest.param("/favicon.ico", None, id="favicon"),
        pytest.param("/models-list", "/models_list", id="typo-of-a-route"),
        pytest.param("/scalar", "/docs/scalar", id="docs-page-without-its-prefix"),
    ],
)
async def test_a_path_that_is_neither_a_route_nor_a_model_is_a_404_that_says_so(
    client: Client, ollama: ServedOllama, path: str, hint: str | None
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(path)  # no message: the 404 comes first

    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith(f"GET {path}: no such route")
    if hint is not None:
        assert f"did you mean {hint}" in detail
    assert not chat.called


@pytest.mark.parametrize("path", ["/API/version", "/stream/api/tags", "/stream/v1/models"])
async def test_the_ollama_and_openai_prefixes_are_never_model_names(
    client: Client, ollama: ServedOllama, path: str
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(path, params={"message": "hi"})

    assert response.status_code == 404
    assert "reserved for Ollama's and OpenAI's APIs" in response.json()["detail"]
    assert not chat.called


def _openai_error(text: str) -> object:
    return {"error": {"message": text, "type": "not_found_error", "param": None, "code": None}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api", lambda text: {"error": text}),
        ("/api/nothing-here", lambda text: {"error": text}),
        ("/v1", _openai_error),
        ("/v1/nothing-here", _openai_error),
    ],
)
async def test_a_path_no_door_serves_is_a_404_in_the_doors_shape(
    client: Client, ollama: ServedOllama, path: str, body: Callable[[str], object]
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get(path, params={"message": "hi"})

    assert response.status_code == 404
    assert response.json() == body("no such route")
    assert not chat.called


async def test_a_flood_of_invented_names_costs_ollama_a_few_calls_a_second(
    client: Client, ollama: ServedOllama
) -> None:
    tags, show_route = ollama.routes["tags"], ollama.routes["show"]

    for index in range(50):
        response = await client.get(f"/invented-{index}", params={"message": "hi"})
        assert response.status_code == 404

    assert tags.call_count == 1, "one model list a second"
    assert show_route.call_count <= SHOW_LOOKUPS_PER_SECOND * 2


async def test_many_requests_for_one_unlisted_model_share_one_lookup(client: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show", name="show").respond(200, json=show(["completion"]))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    responses = await asyncio.gather(*(client.get("/unlisted:7b", params={"message": "hi"}) for _ in range(30)))

    assert [r.status_code for r in responses] == [200] * 30
    assert show_route.call_count == 1
    assert chat.call_count == 30


async def test_a_model_show_knows_but_the_list_does_not_is_served(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show", name="show").respond(200, json=show(["completion"]))
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/unlisted:7b", params={"message": "hi"})

    assert response.status_code == 200
    assert chat.called


async def test_a_model_installed_behind_minatos_back_is_found_by_a_fresh_list(
    client: Client, ollama: ServedOllama
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    assert (await client.get("/newcomer", params={"message": "hi"})).status_code == 404
    ollama.get("/api/tags", name="tags").respond(200, json=catalogue("newcomer:latest"))
    await asyncio.sleep(MIN_REFRESH_SECONDS)

    response = await client.get("/newcomer", params={"message": "hi"})

    assert response.status_code == 200
    assert chat.called


async def test_when_ollama_cannot_list_its_models_the_generation_meets_the_honest_503(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.down()

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 503


async def test_ollama_down_is_a_503_naming_its_url(client: Client, ollama: ServedOllama) -> None:
    ollama.down()

    response = await client.get("/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert f"Ollama is unreachable at {ollama.url}" in response.json()["detail"]
