"""``POST /{model}`` and ``POST /stream/{model}``: the GET routes' parameters in a JSON body."""

from __future__ import annotations

import base64
import json

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.support.payloads import PNG_1PX, chat_answer, chat_done, chat_token, ndjson, show, streamed
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]


async def test_a_posted_message_and_parameters_reach_ollama_as_the_get_routes_send_them(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer("Blue."))
    long_prompt = "why " * 200

    response = await client.post(
        "/llama3.2:1b",
        json={
            "message": long_prompt,
            "system_prompt": "Be brief.",
            "keep_alive": 300,
            "temperature": 0.7,
            "stop": ["x"],
        },
    )

    assert response.status_code == 200
    assert response.json()["response"] == "Blue."
    assert json.loads(route.calls.last.request.content) == {
        "model": "llama3.2:1b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long_prompt}],
        "stream": True,
        "options": {"temperature": 0.7, "stop": ["x"]},
        "keep_alive": 300,
    }


async def test_a_posted_stream_is_relayed_like_the_get_stream(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(
        return_value=streamed(ndjson(chat_token("Hel")), ndjson(chat_token("lo"), chat_done()))
    )

    response = await client.post("/stream/llama3.2", json={"message": "hi"}, headers={"Accept": "application/x-ndjson"})

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line.get("token") for line in lines[:2]] == ["Hel", "lo"]
    assert lines[-1]["done_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        ({}, ["body", "message"], "field required"),
        ({"message": ""}, ["body", "message"], "must not be empty"),
        ({"message": "hi", "temperature": 500}, ["body", "temperature"], "must be at most 100"),
        ({"message": "hi", "top_k": "five"}, ["body", "top_k"], "must be an integer"),
        ({"message": "hi", "keep_alive": "soon"}, ["body", "keep_alive"], "must be a number of seconds"),
        ({"message": "hi", "session": "a b"}, ["body", "session"], "must be 1-128 characters"),
        ({"message": "hi", "stop": ["x"] * 17}, ["body", "stop"], "at most 16"),
    ],
)
async def test_a_bad_body_field_is_a_422_naming_it(
    client: Client, ollama: ServedOllama, body: dict[str, object], loc: list[str], msg: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/llama3.2", json=body)

    assert response.status_code == 422
    item = response.json()["detail"][0]
    assert item["loc"] == loc
    assert msg in item["msg"]
    assert not route.called


async def test_an_unknown_body_field_is_a_422_listing_the_known_ones(client: Client, ollama: ServedOllama) -> None:
    response = await client.post("/llama3.2", json={"message": "hi", "temprature": 0.2})

    assert response.status_code == 422
    item = response.json()["detail"][0]
    assert item["loc"] == ["body", "temprature"]
    assert "temperature" in item["msg"]


async def test_query_parameters_on_a_post_are_refused_not_ignored(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/llama3.2?temperature=0.1", json={"message": "hi"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "temperature"]
    assert not route.called


async def test_posted_images_reach_a_vision_model_as_base64(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    image = "data:image/png;base64," + base64.urlsafe_b64encode(PNG_1PX).decode().rstrip("=")

    response = await client.post("/llava", json={"message": "what is it?", "images": [image]})

    assert response.status_code == 200
    sent = json.loads(route.calls.last.request.content)["messages"][-1]
    assert sent["images"] == [base64.b64encode(PNG_1PX).decode()]


async def test_posted_images_for_a_model_without_vision_are_a_400(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion"]))
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.post("/llama3.2", json={"message": "hi", "images": [base64.b64encode(PNG_1PX).decode()]})

    assert response.status_code == 400
    assert "cannot read images" in response.json()["detail"]
    assert not route.called


async def test_a_posted_image_that_is_not_one_is_a_422_naming_its_index(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))

    response = await client.post(
        "/llava", json={"message": "hi", "images": [base64.b64encode(PNG_1PX).decode(), "bm90IGFuIGltYWdl"]}
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "images", 1]


async def test_too_many_posted_images_are_a_422(client: Client, ollama: ServedOllama) -> None:
    response = await client.post("/llava", json={"message": "hi", "images": ["x"] * 4})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "images"]
