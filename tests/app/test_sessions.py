"""Conversations: trimming, expiry, serialised turns, isolation, and what reaches Ollama."""

from __future__ import annotations

import json

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.support.payloads import PNG_1PX, chat_answer, chat_done, chat_token, ndjson, show
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


# -- through HTTP ---------------------------------------------------------------------------


async def test_three_turns_send_the_whole_history_upstream_in_order(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat")
    route.side_effect = [
        httpx.Response(200, json=chat_answer("Hello Alice.")),
        httpx.Response(200, json=chat_answer("Blue.")),
        httpx.Response(200, json=chat_answer("Alice.")),
    ]
    await client.put("/chat/alice/system_prompt", json={"system_prompt": "Be brief."})

    for question in ("I am Alice.", "Sky colour?", "My name?"):
        response = await client.get("/llama3.2", params={"message": question, "session": "alice"})
        assert response.status_code == 200

    assert json.loads(route.calls.last.request.content)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I am Alice."},
        {"role": "assistant", "content": "Hello Alice."},
        {"role": "user", "content": "Sky colour?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "My name?"},
    ]
    view = (await client.get("/chat/alice")).json()
    assert view["system_prompt"] == "Be brief."
    assert [m["content"] for m in view["messages"]] == [
        "I am Alice.",
        "Hello Alice.",
        "Sky colour?",
        "Blue.",
        "My name?",
        "Alice.",
    ]
    assert view["messages"][1]["model"] == "llama3.2"
    assert view["totals"] == {"messages": 6, "turns": 3, "images": 0, "characters": 53}


async def test_a_request_system_prompt_applies_to_that_request_only(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer("ok"))
    await client.put("/chat/s/system_prompt", json={"system_prompt": "Session prompt."})

    await client.get("/llama3.2", params={"message": "q", "session": "s", "system_prompt": "Just now."})

    assert json.loads(route.calls.last.request.content)["messages"][0] == {"role": "system", "content": "Just now."}
    assert (await client.get("/chat/s")).json()["system_prompt"] == "Session prompt."


async def test_a_completed_stream_is_recorded_and_a_failed_one_is_not(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat")
    route.side_effect = [
        httpx.Response(200, content=ndjson(chat_token("Hel"), chat_token("lo"), chat_done())),
        httpx.Response(200, content=ndjson(chat_token("half"), {"error": "runner crashed"})),
    ]

    done = await client.get("/stream/llama3.2", params={"message": "one", "session": "s"})
    failed = await client.get(
        "/stream/llama3.2", params={"message": "two", "session": "s"}, headers={"Accept": "application/x-ndjson"}
    )

    assert done.text == "Hello"
    assert failed.text.splitlines()[-1].startswith('{"error":')
    messages = (await client.get("/chat/s")).json()["messages"]
    assert [m["content"] for m in messages] == ["one", "Hello"]


async def test_an_upstream_failure_leaves_the_session_as_it_was(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(404, json={"error": "model 'nope' not found"})

    response = await client.get("/nope", params={"message": "hi", "session": "s"})

    assert response.status_code == 404
    assert (await client.get("/chat/s")).status_code == 404


async def test_images_of_a_session_turn_are_sent_again_with_follow_ups(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))
    route = ollama.post("/api/chat").respond(200, json=chat_answer("A cat."))
    await client.post(
        "/vision/llava", params={"message": "What is it?", "session": "s"}, files=[("images", ("a.png", PNG_1PX))]
    )

    await client.get("/llava", params={"message": "What colour?", "session": "s"})

    first_turn = json.loads(route.calls.last.request.content)["messages"][0]
    assert first_turn["content"] == "What is it?"
    assert len(first_turn["images"]) == 1
    assert (await client.get("/chat/s")).json()["messages"][0]["image_count"] == 1


async def test_a_text_model_after_a_picture_gets_the_history_without_its_images(
    client: Client, ollama: ServedOllama
) -> None:
    def capabilities(request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        return httpx.Response(200, json=show(["completion", "vision"] if model == "llava" else ["completion"]))

    ollama.post("/api/show").mock(side_effect=capabilities)
    route = ollama.post("/api/chat").respond(200, json=chat_answer("A red ball."))
    await client.post(
        "/vision/llava", params={"message": "What is it?", "session": "bob"}, files=[("images", ("a.png", PNG_1PX))]
    )

    response = await client.get("/llama3.2", params={"message": "What colour was it?", "session": "bob"})

    assert response.status_code == 200
    sent = json.loads(route.calls.last.request.content)["messages"]
    assert [m["content"] for m in sent] == ["What is it?", "A red ball.", "What colour was it?"]
    assert not [m for m in sent if m.get("images")], "a text-only model is never sent an image"
    again = await client.get("/llava", params={"message": "And its shape?", "session": "bob"})
    assert again.status_code == 200
    assert json.loads(route.calls.last.request.content)["messages"][0]["images"], "a vision model still sees it"
    assert (await client.get("/chat/bob")).json()["messages"][0]["image_count"] == 1


async def test_a_conversation_without_images_costs_no_capability_lookup(client: Client, ollama: ServedOllama) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(["completion"]))
    ollama.post("/api/chat").respond(200, json=chat_answer("Hi."))
    await client.get("/llama3.2", params={"message": "Hello", "session": "plain"})

    await client.get("/llama3.2", params={"message": "Again", "session": "plain"})

    assert not show_route.called


@pytest.mark.parametrize("session", ["has space", "x" * 129, "slash/inside", ""])
async def test_a_malformed_session_id_is_a_422_and_reaches_nobody(
    client: Client, ollama: ServedOllama, session: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await client.get("/llama3.2", params={"message": "hi", "session": session})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "session"]
    assert not route.called


async def test_unknown_session_is_a_404_and_clearing_it_is_idempotent(client: Client) -> None:
    assert (await client.get("/chat/nobody")).status_code == 404
    assert (await client.delete("/chat/nobody")).status_code == 204
    assert (await client.delete("/chat/nobody/system_prompt")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"system_prompt": ""}, {"system_prompt": "x" * 1001}, {"prompt": "wrong key"}, {"system_prompt": 3}],
)
async def test_a_bad_system_prompt_is_a_422(client: Client, body: dict[str, object]) -> None:
    response = await client.put("/chat/s/system_prompt", json=body)

    assert response.status_code == 422
    assert (await client.get("/chat/s")).status_code == 404


async def test_clearing_a_session_forgets_messages_and_system_prompt(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await client.put("/chat/s/system_prompt", json={"system_prompt": "p"})
    await client.get("/llama3.2", params={"message": "hi", "session": "s"})

    assert (await client.delete("/chat/s")).status_code == 204

    assert (await client.get("/chat/s")).status_code == 404
    assert (await client.get("/chat")).json()["total"] == 0


async def test_removing_the_system_prompt_keeps_the_messages(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await client.put("/chat/s/system_prompt", json={"system_prompt": "p"})
    await client.get("/llama3.2", params={"message": "hi", "session": "s"})

    assert (await client.delete("/chat/s/system_prompt")).status_code == 204

    view = (await client.get("/chat/s")).json()
    assert view["system_prompt"] is None
    assert len(view["messages"]) == 2


async def test_the_session_list_is_paginated(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    for n in range(3):
        await client.get("/llama3.2", params={"message": "hi", "session": f"s{n}"})

    page = (await client.get("/chat", params={"offset": 1, "limit": 1})).json()

    assert page["total"] == 3
    assert [s["id"] for s in page["sessions"]] == ["s1"]
    assert page["sessions"][0]["message_count"] == 2
    assert (await client.get("/chat", params={"limit": 0})).status_code == 422
