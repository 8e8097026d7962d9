"""Conversations through HTTP when keys are configured: each key sees only its own; admins see all."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.state.sqlite.conversations import SqliteStore
from minato.web.app import create_app
from tests.support.payloads import chat_answer
from tests.support.served_ollama import ServedOllama
from tests.unit.test_session_store import DAMAGED, HEALTHY, ROOMY, _store_with_a_damaged_conversation

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
USER_1 = {"Authorization": "Key user-1"}
USER_2 = {"Authorization": "Key user-2"}
ADMIN = {"Authorization": "Key admin-1"}


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


FP_1, FP_2, FP_ADMIN = _fingerprint("user-1"), _fingerprint("user-2"), _fingerprint("admin-1")


@pytest.fixture(name="keyed")
async def fx_keyed(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """Minato with two user keys and one admin key."""
    configured = msgspec.structs.replace(settings, api_keys=("user-1", "user-2"), admin_keys=("admin-1",))
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        yield client


async def _turn(client: Client, headers: dict[str, str], session: str, message: str) -> httpx.Response:
    response = await client.get("/llama3.2", params={"message": message, "session": session}, headers=headers)
    assert response.status_code == 200
    return response


async def test_another_keys_conversation_is_as_if_it_did_not_exist(keyed: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer("noted"))
    await keyed.put("/chat/abc/system_prompt", json={"system_prompt": "Secret prompt."}, headers=USER_1)
    await _turn(keyed, USER_1, "abc", "my secret is 42")

    read = await keyed.get("/chat/abc", headers=USER_2)
    nonexistent = await keyed.get("/chat/nobody", headers=USER_2)
    deleted = await keyed.delete("/chat/abc", headers=USER_2)
    prompt_removed = await keyed.delete("/chat/abc/system_prompt", headers=USER_2)
    listing = (await keyed.get("/chat", headers=USER_2)).json()

    assert (read.status_code, read.json()) == (404, {"detail": "no conversation 'abc'"})
    assert nonexistent.status_code == 404
    assert deleted.status_code == 204
    assert prompt_removed.status_code == 404
    assert listing == {"sessions": [], "total": 0, "offset": 0, "limit": 20}
    own = (await keyed.get("/chat/abc", headers=USER_1)).json()
    assert own["owner"] == FP_1
    assert own["system_prompt"] == "Secret prompt."
    assert [m["content"] for m in own["messages"]] == ["my secret is 42", "noted"]
    assert route.call_count == 1


async def test_the_same_id_from_another_key_is_a_separate_conversation(keyed: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer("ok"))
    await keyed.put("/chat/abc/system_prompt", json={"system_prompt": "Secret prompt."}, headers=USER_1)
    await _turn(keyed, USER_1, "abc", "my secret is 42")

    await _turn(keyed, USER_2, "abc", "what was said?")

    assert json.loads(route.calls.last.request.content)["messages"] == [
        {"role": "user", "content": "what was said?"}
    ], "no foreign history or system prompt reaches Ollama"
    mine = (await keyed.get("/chat", headers=USER_1)).json()["sessions"]
    theirs = (await keyed.get("/chat/abc", headers=USER_2)).json()
    assert [(s["owner"], s["id"], s["message_count"]) for s in mine] == [(FP_1, "abc", 2)]
    assert (theirs["owner"], theirs["system_prompt"], len(theirs["messages"])) == (FP_2, None, 2)


async def test_a_user_key_naming_another_owner_is_refused(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await _turn(keyed, USER_1, "abc", "hi")

    for method, path in (("GET", "/chat/abc"), ("DELETE", "/chat/abc"), ("GET", "/chat")):
        response = await keyed.request(method, path, params={"owner": FP_1}, headers=USER_2)
        assert response.status_code == 403, (method, path)
    assert (await keyed.get("/chat/abc", params={"owner": FP_1}, headers=USER_1)).status_code == 200
    assert (await keyed.get("/chat/abc", headers=USER_1)).status_code == 200, "the refused DELETE changed nothing"


async def test_an_admin_lists_reads_and_deletes_every_keys_conversations(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await _turn(keyed, USER_1, "one", "hi")
    await _turn(keyed, USER_2, "two", "hello")

    everything = (await keyed.get("/chat", headers=ADMIN)).json()
    filtered = (await keyed.get("/chat", params={"owner": FP_2}, headers=ADMIN)).json()
    read = (await keyed.get("/chat/one", headers=ADMIN)).json()
    deleted = await keyed.delete("/chat/two", headers=ADMIN)

    assert {(s["owner"], s["id"]) for s in everything["sessions"]} == {(FP_1, "one"), (FP_2, "two")}
    assert everything["total"] == 2
    assert [(s["owner"], s["id"]) for s in filtered["sessions"]] == [(FP_2, "two")]
    assert (read["owner"], read["messages"][0]["content"]) == (FP_1, "hi")
    assert deleted.status_code == 204
    assert (await keyed.get("/chat/two", headers=USER_2)).status_code == 404
    assert (await keyed.get("/chat/one", headers=USER_1)).status_code == 200


async def test_an_admin_must_choose_between_owners_of_the_same_id(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await _turn(keyed, USER_1, "abc", "from one")
    await _turn(keyed, USER_2, "abc", "from two")

    ambiguous = await keyed.get("/chat/abc", headers=ADMIN)
    ambiguous_delete = await keyed.delete("/chat/abc", headers=ADMIN)
    chosen = (await keyed.get("/chat/abc", params={"owner": FP_2}, headers=ADMIN)).json()
    deleted = await keyed.delete("/chat/abc", params={"owner": FP_1}, headers=ADMIN)

    assert ambiguous.status_code == 409
    assert FP_1 in ambiguous.json()["detail"]
    assert FP_2 in ambiguous.json()["detail"]
    assert "owner=" in ambiguous.json()["detail"]
    assert ambiguous_delete.status_code == 409
    assert chosen["messages"][0]["content"] == "from two"
    assert deleted.status_code == 204
    assert (await keyed.get("/chat/abc", headers=USER_1)).status_code == 404
    assert (await keyed.get("/chat/abc", headers=ADMIN)).json()["owner"] == FP_2, "now only one has it"


async def test_an_admins_own_conversation_wins_over_others_with_the_same_id(
    keyed: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await _turn(keyed, USER_1, "abc", "from one")
    await _turn(keyed, USER_2, "abc", "from two")
    await _turn(keyed, ADMIN, "abc", "from admin")

    assert (await keyed.get("/chat/abc", headers=ADMIN)).json()["owner"] == FP_ADMIN


@pytest.mark.parametrize("owner", ["not-hex-at-all", "ABCDEF123456", "abc"])
async def test_a_malformed_owner_is_a_422(keyed: Client, owner: str) -> None:
    response = await keyed.get("/chat", params={"owner": owner}, headers=ADMIN)

    assert response.status_code == 422


async def test_without_keys_every_caller_shares_the_conversations_as_before(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer("ok"))
    await _turn(client, {}, "abc", "first")
    await _turn(client, {"Authorization": "Key anything"}, "abc", "second")

    view = (await client.get("/chat/abc")).json()
    listing = (await client.get("/chat")).json()

    assert len(json.loads(route.calls.last.request.content)["messages"]) == 3
    assert (view["owner"], len(view["messages"])) == ("", 4)
    assert [(s["owner"], s["id"]) for s in listing["sessions"]] == [("", "abc")]
    assert (await client.delete("/chat/abc")).status_code == 204
    assert (await client.get("/chat/abc")).status_code == 404


async def test_a_damaged_conversation_answers_409_and_deleting_it_starts_afresh(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path)
    route = ollama.post("/api/chat").respond(200, json=chat_answer("fresh"))
    configured = msgspec.structs.replace(settings, session_store=str(path))
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        read = await client.get(f"/chat/{DAMAGED}")
        turn = await client.get("/llama3.2", params={"message": "hi", "session": DAMAGED})
        healthy = await client.get(f"/chat/{HEALTHY}")
        listing = await client.get("/chat")
        deleted = await client.delete(f"/chat/{DAMAGED}")
        gone = await client.get(f"/chat/{DAMAGED}")
        fresh = await client.get("/llama3.2", params={"message": "again", "session": DAMAGED})
        view = await client.get(f"/chat/{DAMAGED}")

    assert read.status_code == 409
    assert f"'{DAMAGED}'" in read.json()["detail"]
    assert f"DELETE /chat/{DAMAGED}" in read.json()["detail"]
    assert turn.status_code == 409
    assert route.call_count == 1, "only the fresh turn reached Ollama"
    assert (healthy.status_code, len(healthy.json()["messages"])) == (200, 40)
    assert (listing.status_code, listing.json()["total"]) == (200, 2)
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert fresh.status_code == 200
    assert json.loads(route.calls.last.request.content)["messages"] == [{"role": "user", "content": "again"}]
    assert [m["content"] for m in view.json()["messages"]] == ["again", "fresh"]


async def test_conversations_from_before_keys_are_seen_by_admins_only(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    await store.open()
    await store.set_system_prompt("", "old", "From before keys.", caps=ROOMY, now=time.time())
    await store.set_system_prompt(FP_ADMIN, "old", "The admin's own.", caps=ROOMY, now=time.time())
    await store.close()
    configured = msgspec.structs.replace(
        settings, session_store=str(path), api_keys=("user-1",), admin_keys=("admin-1",)
    )
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        by_user = await client.get("/chat/old", headers=USER_1)
        user_listing = (await client.get("/chat", headers=USER_1)).json()
        by_admin = await client.get("/chat/old", headers=ADMIN)
        named = await client.get("/chat/old", params={"owner": ""}, headers=ADMIN)
        admin_listing = (await client.get("/chat", params={"owner": ""}, headers=ADMIN)).json()

    assert by_user.status_code == 404
    assert user_listing["total"] == 0
    assert (by_admin.json()["owner"], by_admin.json()["system_prompt"]) == (FP_ADMIN, "The admin's own.")
    assert (named.json()["owner"], named.json()["system_prompt"]) == ("", "From before keys.")
    assert [(s["owner"], s["id"]) for s in admin_listing["sessions"]] == [("", "old")]
