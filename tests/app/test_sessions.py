"""Conversations: trimming, expiry, serialised turns, isolation, and what reaches Ollama."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.core.sessions import SessionManager
from minato.settings import Settings
from minato.state.memory import LocalTurnLocks
from minato.state.sessions.model import Bounds, Caps, StoredMessage, trim_plan
from minato.state.sessions.sqlite import SqliteStore
from minato.state.sessions.store import MemoryStore, SessionStore
from tests.support.payloads import PNG_1PX, chat_answer, chat_done, chat_token, ndjson, show

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
#: Caps no test here reaches (the caps have tests of their own: test_session_caps.py).
ROOMY = Caps(max_sessions=10_000, max_per_key=10_000)


def _pair(n: int, images: list[str] | None = None) -> list[StoredMessage]:
    return [
        StoredMessage(role="user", content=f"q{n}", images=images or [], image_count=len(images or []), at=n),
        StoredMessage(role="assistant", content=f"a{n}", model="m", at=n),
    ]


@pytest.mark.parametrize(
    ("sizes", "max_messages", "budget", "plan"),
    [
        pytest.param([0, 0, 0, 0], 4, 100, (0, 0), id="within-bounds"),
        pytest.param([0, 0, 0, 0, 0, 0], 4, 100, (2, 0), id="drops-the-oldest-pair"),
        pytest.param([0, 0, 0, 0, 0, 0], 3, 100, (4, 0), id="drops-whole-pairs-only"),
        pytest.param([50, 0, 50, 0, 50, 0], 10, 100, (0, 1), id="strips-oldest-images-first"),
        pytest.param([50, 0, 50, 0], 10, 0, (0, 3), id="zero-budget-keeps-no-images"),
    ],
)
def test_trim_plan_drops_whole_pairs_then_oldest_images(
    sizes: list[int], max_messages: int, budget: int, plan: tuple[int, int]
) -> None:
    assert trim_plan(sizes, Bounds(max_messages=max_messages, image_budget=budget)) == plan


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store implementation, opened and closed."""
    instance: SessionStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    await instance.open()
    yield instance
    await instance.close()


async def test_a_store_keeps_messages_in_order_and_trims_the_oldest_pairs(store: SessionStore) -> None:
    for n in range(4):
        await store.append("", "s", _pair(n), Bounds(max_messages=6, image_budget=10**6), caps=ROOMY, now=100 + n)

    session = await store.get("", "s")

    assert session is not None
    assert [m.content for m in session.messages] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert session.last_active == 103
    assert session.created_at == 100


async def test_a_store_drops_old_images_over_budget_but_keeps_their_text(store: SessionStore) -> None:
    await store.append("", "s", _pair(1, ["A" * 60]), Bounds(max_messages=10, image_budget=100), caps=ROOMY, now=1)
    await store.append("", "s", _pair(2, ["B" * 60]), Bounds(max_messages=10, image_budget=100), caps=ROOMY, now=2)

    session = await store.get("", "s")

    assert session is not None
    assert [m.images for m in session.messages if m.role == "user"] == [[], ["B" * 60]]
    assert [m.image_count for m in session.messages if m.role == "user"] == [1, 1]
    assert session.messages[0].content == "q1"


async def test_a_store_keeps_the_system_prompt_through_trimming(store: SessionStore) -> None:
    await store.set_system_prompt("", "s", "Be brief.", caps=ROOMY, now=1)
    for n in range(5):
        await store.append("", "s", _pair(n), Bounds(max_messages=2, image_budget=0), caps=ROOMY, now=2 + n)

    session = await store.get("", "s")

    assert session is not None
    assert session.system_prompt == "Be brief."
    assert [m.content for m in session.messages] == ["q4", "a4"]


async def test_a_store_expires_idle_sessions_then_the_least_recent_beyond_the_cap(store: SessionStore) -> None:
    for n, sid in enumerate(["old", "mid", "new", "newest"]):
        await store.append("", sid, _pair(n), Bounds(max_messages=10, image_budget=0), caps=ROOMY, now=10 * (n + 1))

    dropped = await store.expire(idle_before=15, caps=Caps(max_sessions=2, max_per_key=2))

    assert dropped == 2
    page, total = await store.list(None, 0, 10)
    assert [s.id for s in page] == ["newest", "new"]
    assert total == 2


async def test_a_store_lists_sessions_most_recent_first_with_pagination(store: SessionStore) -> None:
    for n in range(5):
        await store.append("", f"s{n}", _pair(n), Bounds(max_messages=10, image_budget=0), caps=ROOMY, now=n)

    page, total = await store.list(None, 1, 2)

    assert total == 5
    assert [(s.id, s.message_count) for s in page] == [("s3", 2), ("s2", 2)]


async def test_deleting_a_session_twice_is_fine(store: SessionStore) -> None:
    await store.append("", "s", _pair(1), Bounds(max_messages=10, image_budget=0), caps=ROOMY, now=1)

    await store.delete("", "s")
    await store.delete("", "s")

    assert await store.get("", "s") is None


async def test_the_sqlite_store_keeps_sessions_across_reopening(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "s.db")
    await first.open()
    await first.append("", "s", _pair(1, ["aGk="]), Bounds(max_messages=10, image_budget=100), caps=ROOMY, now=1)
    await first.close()

    second = SqliteStore(tmp_path / "s.db")
    await second.open()
    session = await second.get("", "s")
    await second.close()

    assert session is not None
    assert session.messages[0].images == ["aGk="]


async def test_turns_on_one_session_wait_for_each_other_and_other_sessions_do_not() -> None:
    turns = LocalTurnLocks()
    manager = SessionManager(MemoryStore(), turns, Settings(session_store="memory://"))
    await manager.start()
    try:
        first = await manager.begin("", "a")
        second = asyncio.ensure_future(manager.begin("", "a"))
        other = await asyncio.wait_for(manager.begin("", "b"), timeout=1)
        await asyncio.sleep(0.05)
        assert not second.done(), "the second turn on a session waits for the first"

        await first.commit("m", "q", [], "answer")
        first.release()
        waited = await asyncio.wait_for(second, timeout=1)

        assert waited.session is not None
        assert [m.content for m in waited.session.messages] == ["q", "answer"]
        waited.release()
        other.release()
        assert turns._locks == {}
    finally:
        await manager.stop()


async def test_the_same_id_of_two_owners_never_waits_for_the_other() -> None:
    turns = LocalTurnLocks()
    manager = SessionManager(MemoryStore(), turns, Settings(session_store="memory://"))
    await manager.start()
    try:
        first = await manager.begin("aaaaaaaaaaaa", "a")
        other = await asyncio.wait_for(manager.begin("bbbbbbbbbbbb", "a"), timeout=1)
        await other.commit("m", "q", [], "answer")
        other.release()
        first.release()

        assert await manager.get("aaaaaaaaaaaa", "a") is None
        assert await manager.get("bbbbbbbbbbbb", "a") is not None
        assert turns._locks == {}
    finally:
        await manager.stop()


async def test_a_change_outside_a_turn_waits_for_the_turn_in_progress() -> None:
    store = MemoryStore()
    turns = LocalTurnLocks()
    manager = SessionManager(store, turns, Settings(session_store="memory://"))
    await manager.start()
    try:
        turn = await manager.begin("", "s")

        async def clear() -> None:
            async with manager.exclusive("", "s"):
                await store.delete("", "s")

        clearing = asyncio.ensure_future(clear())
        await asyncio.sleep(0.05)
        assert not clearing.done(), "the delete waits for the turn in progress"
        await turn.commit("m", "q", [], "answer")
        turn.release()
        await asyncio.wait_for(clearing, timeout=1)

        assert await store.get("", "s") is None
        assert turns._locks == {}
    finally:
        await manager.stop()


async def test_a_session_idle_past_its_ttl_is_gone() -> None:
    store = MemoryStore()
    manager = SessionManager(store, LocalTurnLocks(), Settings(session_store="memory://", session_ttl=60))
    await store.append("", "s", _pair(1), Bounds(max_messages=10, image_budget=0), caps=ROOMY, now=time.time() - 120)

    assert await manager.get("", "s") is None
    assert await store.get("", "s") is None


# -- through HTTP ---------------------------------------------------------------------------


async def test_three_turns_send_the_whole_history_upstream_in_order(client: Client, ollama: respx.MockRouter) -> None:
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


async def test_a_request_system_prompt_applies_to_that_request_only(client: Client, ollama: respx.MockRouter) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer("ok"))
    await client.put("/chat/s/system_prompt", json={"system_prompt": "Session prompt."})

    await client.get("/llama3.2", params={"message": "q", "session": "s", "system_prompt": "Just now."})

    assert json.loads(route.calls.last.request.content)["messages"][0] == {"role": "system", "content": "Just now."}
    assert (await client.get("/chat/s")).json()["system_prompt"] == "Session prompt."


async def test_a_completed_stream_is_recorded_and_a_failed_one_is_not(client: Client, ollama: respx.MockRouter) -> None:
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


async def test_an_upstream_failure_leaves_the_session_as_it_was(client: Client, ollama: respx.MockRouter) -> None:
    ollama.post("/api/chat").respond(404, json={"error": "model 'nope' not found"})

    response = await client.get("/nope", params={"message": "hi", "session": "s"})

    assert response.status_code == 404
    assert (await client.get("/chat/s")).status_code == 404


async def test_images_of_a_session_turn_are_sent_again_with_follow_ups(
    client: Client, ollama: respx.MockRouter
) -> None:
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
    client: Client, ollama: respx.MockRouter
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


async def test_a_conversation_without_images_costs_no_capability_lookup(
    client: Client, ollama: respx.MockRouter
) -> None:
    show_route = ollama.post("/api/show").respond(200, json=show(["completion"]))
    ollama.post("/api/chat").respond(200, json=chat_answer("Hi."))
    await client.get("/llama3.2", params={"message": "Hello", "session": "plain"})

    await client.get("/llama3.2", params={"message": "Again", "session": "plain"})

    assert not show_route.called


@pytest.mark.parametrize("session", ["has space", "x" * 129, "slash/inside", ""])
async def test_a_malformed_session_id_is_a_422_and_reaches_nobody(
    client: Client, ollama: respx.MockRouter, session: str
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


async def test_clearing_a_session_forgets_messages_and_system_prompt(client: Client, ollama: respx.MockRouter) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await client.put("/chat/s/system_prompt", json={"system_prompt": "p"})
    await client.get("/llama3.2", params={"message": "hi", "session": "s"})

    assert (await client.delete("/chat/s")).status_code == 204

    assert (await client.get("/chat/s")).status_code == 404
    assert (await client.get("/chat")).json()["total"] == 0


async def test_removing_the_system_prompt_keeps_the_messages(client: Client, ollama: respx.MockRouter) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await client.put("/chat/s/system_prompt", json={"system_prompt": "p"})
    await client.get("/llama3.2", params={"message": "hi", "session": "s"})

    assert (await client.delete("/chat/s/system_prompt")).status_code == 204

    view = (await client.get("/chat/s")).json()
    assert view["system_prompt"] is None
    assert len(view["messages"]) == 2


async def test_the_session_list_is_paginated(client: Client, ollama: respx.MockRouter) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    for n in range(3):
        await client.get("/llama3.2", params={"message": "hi", "session": f"s{n}"})

    page = (await client.get("/chat", params={"offset": 1, "limit": 1})).json()

    assert page["total"] == 3
    assert [s["id"] for s in page["sessions"]] == ["s1"]
    assert page["sessions"][0]["message_count"] == 2
    assert (await client.get("/chat", params={"limit": 0})).status_code == 422
