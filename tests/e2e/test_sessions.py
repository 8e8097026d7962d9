"""Conversations with Minato as a real process: history upstream, abandonment, restarts, crashes."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import Backend, MinatoServer, start_minato, stop_minato
from tests.unit.test_session_store import DAMAGED, HEALTHY, _store_with_a_damaged_conversation, _v1_database

pytestmark = pytest.mark.e2e


def _last_chat_messages(standin: httpx.Client) -> list[dict[str, object]]:
    chats = [r for r in standin.get("/_standin/requests").json() if r["path"] == "/api/chat"]
    messages: list[dict[str, object]] = chats[-1]["body"]["messages"]
    return messages


def test_a_three_turn_conversation_sends_the_full_history_in_order(
    http: httpx.Client, standin: httpx.Client, backend: Backend
) -> None:
    session = f"three-turns-{time.monotonic_ns()}"
    answers = []
    for question in ("first", "second", "third"):
        response = http.get(f"/{backend.model}", params={"message": question, "session": session})
        assert response.status_code == 200
        answers.append(response.json()["response"])

    assert _last_chat_messages(standin) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": answers[1]},
        {"role": "user", "content": "third"},
    ]
    assert len(http.get(f"/chat/{session}").json()["messages"]) == 6


def test_a_live_conversation_remembers_what_was_said(http: httpx.Client, backend: Backend) -> None:
    if backend.kind == "standin":
        pytest.skip("the stand-in does not understand what it is told")
    session = f"live-memory-{time.monotonic_ns()}"
    http.get(f"/{backend.model}", params={"message": "My name is Zebulon. Reply OK.", "session": session})

    answer = http.get(f"/{backend.model}", params={"message": "What is my name? One word.", "session": session})

    assert "zebulon" in answer.json()["response"].lower()
    http.delete(f"/chat/{session}")


def test_an_abandoned_stream_records_nothing(minato: MinatoServer, http: httpx.Client, standin: httpx.Client) -> None:
    session = f"abandoned-{time.monotonic_ns()}"
    assert http.get("/llama3.2:1b", params={"message": "kept", "session": session}).status_code == 200
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "GET", f"{minato.url}/stream/standin/slow", params={"message": "dropped", "session": session}
        ) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        e["type"] == "stream_cancelled" for e in standin.get("/_standin/events").json()
    ):
        time.sleep(0.02)
    follow_up = http.get("/llama3.2:1b", params={"message": "after", "session": session})

    assert follow_up.status_code == 200, "the abandoned turn released the session"
    contents = [m["content"] for m in http.get(f"/chat/{session}").json()["messages"]]
    assert "dropped" not in contents
    assert contents[0] == "kept"
    assert contents[2] == "after"


def test_history_survives_a_restart_and_a_kill_9(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory: Path = tmp_path_factory.mktemp("durable")
    database = str(directory / "sessions.db")

    server = start_minato(backend.ollama_url, directory / "first.log", session_store=database)
    try:
        first = httpx.get(f"{server.url}/llama3.2:1b", params={"message": "before restart", "session": "d"}, timeout=10)
        httpx.put(f"{server.url}/chat/d/system_prompt", json={"system_prompt": "Be durable."}, timeout=10)
    finally:
        stop_minato(server)
    assert first.status_code == 200

    server = start_minato(backend.ollama_url, directory / "second.log", session_store=database)
    try:
        second = httpx.get(f"{server.url}/llama3.2:1b", params={"message": "before kill", "session": "d"}, timeout=10)
        assert second.status_code == 200
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        if server.process.poll() is None:
            stop_minato(server)

    server = start_minato(backend.ollama_url, directory / "third.log", session_store=database)
    try:
        view = httpx.get(f"{server.url}/chat/d", timeout=10).json()
        httpx.get(f"{server.url}/llama3.2:1b", params={"message": "after", "session": "d"}, timeout=10)
    finally:
        stop_minato(server)

    assert view["system_prompt"] == "Be durable."
    assert [m["content"] for m in view["messages"] if m["role"] == "user"] == ["before restart", "before kill"]
    assert _last_chat_messages(standin)[0] == {"role": "system", "content": "Be durable."}
    assert len(_last_chat_messages(standin)) == 6


def test_a_v1_store_migrates_on_start_and_keys_keep_their_conversations_apart(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory: Path = tmp_path_factory.mktemp("migrated")
    database = directory / "sessions.db"
    _v1_database(database, since=time.time() - 3600)
    server = start_minato(
        backend.ollama_url,
        directory / "minato.log",
        session_store=str(database),
        api_keys="user-1,user-2",
        admin_keys="admin-1",
    )
    try:
        url = server.url
        by_user = httpx.get(f"{url}/chat/alice", headers={"X-API-Key": "user-1"}, timeout=10)
        by_admin = httpx.get(f"{url}/chat/alice", headers={"X-API-Key": "admin-1"}, timeout=10)
        turn = httpx.get(
            f"{url}/llama3.2:1b",
            params={"message": "mine", "session": "alice"},
            headers={"X-API-Key": "user-1"},
            timeout=10,
        )
        sent = _last_chat_messages(standin)
        foreign = httpx.get(f"{url}/chat/alice", headers={"X-API-Key": "user-2"}, timeout=10)
    finally:
        stop_minato(server)

    assert by_user.status_code == 404, "migrated conversations belong to no key"
    assert by_admin.status_code == 200
    assert (by_admin.json()["owner"], len(by_admin.json()["messages"])) == ("", 4)
    assert turn.status_code == 200
    assert sent == [{"role": "user", "content": "mine"}], "user-1's alice is its own, without the migrated history"
    assert foreign.status_code == 404
    assert "session_store_migrated" in (directory / "minato.log").read_text()


def test_a_damaged_store_is_reported_at_start_and_its_damaged_conversation_can_be_deleted(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory: Path = tmp_path_factory.mktemp("damaged")
    database = directory / "sessions.db"
    asyncio.run(_store_with_a_damaged_conversation(database))
    server = start_minato(backend.ollama_url, directory / "minato.log", session_store=str(database))
    try:
        url = server.url
        read = httpx.get(f"{url}/chat/{DAMAGED}", timeout=10)
        healthy = httpx.get(f"{url}/chat/{HEALTHY}", timeout=10)
        deleted = httpx.delete(f"{url}/chat/{DAMAGED}", timeout=10)
        fresh = httpx.get(f"{url}/llama3.2:1b", params={"message": "again", "session": DAMAGED}, timeout=10)
    finally:
        stop_minato(server)

    assert read.status_code == 409
    assert f"DELETE /chat/{DAMAGED}" in read.json()["detail"]
    assert healthy.status_code == 200
    assert deleted.status_code == 204
    assert fresh.status_code == 200
    events = [json.loads(line) for line in (directory / "minato.log").read_text().splitlines() if line.startswith("{")]
    [report] = [e for e in events if e.get("event") == "session_store_damaged"]
    assert report["damaged_sessions"] == [DAMAGED]


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_a_key_that_makes_many_conversations_leaves_another_keys_conversation_answering(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory: Path = tmp_path_factory.mktemp("crowded")
    settings = {"session_store": str(directory / "sessions.db"), "max_sessions": "4", "api_keys": "key-a,key-b"}
    a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}

    def turn(url: str, headers: dict[str, str], session: str, message: str) -> None:
        response = httpx.get(
            f"{url}/llama3.2:1b", params={"message": message, "session": session}, headers=headers, timeout=10
        )
        assert response.status_code == 200

    server = start_minato(backend.ollama_url, directory / "first.log", **settings)
    try:
        turn(server.url, b, "b-1", "remember this")
        turn(server.url, b, "b-1", "and this")
        for n in range(10):
            turn(server.url, a, f"a-{n}", "another one")
        flooder = httpx.get(f"{server.url}/chat", headers=a, timeout=10).json()
    finally:
        stop_minato(server)

    server = start_minato(backend.ollama_url, directory / "second.log", **settings)  # the start-up sweep too
    try:
        kept = httpx.get(f"{server.url}/chat/b-1", headers=b, timeout=10)
        turn(server.url, b, "b-1", "what did I say?")
        sent = _last_chat_messages(standin)
    finally:
        stop_minato(server)

    assert [s["id"] for s in flooder["sessions"]] == ["a-9", "a-8", "a-7"], "only its own were evicted"
    assert flooder["total"] == 3
    assert kept.status_code == 200
    assert [m["content"] for m in kept.json()["messages"] if m["role"] == "user"] == ["remember this", "and this"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["remember this", "and this", "what did I say?"]


def test_the_store_minato_makes_is_private_and_a_store_others_can_read_is_reported(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory: Path = tmp_path_factory.mktemp("private")
    database = directory / "made" / "by-minato" / "sessions.db"
    server = start_minato(backend.ollama_url, directory / "first.log", session_store=str(database))
    try:
        first = httpx.get(f"{server.url}/llama3.2:1b", params={"message": "secret", "session": "p"}, timeout=10)
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in directory.glob("made/by-minato/sessions.db*")}
    finally:
        stop_minato(server)
    made = [stat.S_IMODE(d.stat().st_mode) for d in (directory / "made", database.parent)]
    database.chmod(0o644)  # as an older Minato left it

    server = start_minato(backend.ollama_url, directory / "second.log", session_store=str(database))
    try:
        kept = httpx.get(f"{server.url}/chat/p", timeout=10)
    finally:
        stop_minato(server)

    assert first.status_code == 200
    assert modes == {"sessions.db": 0o600, "sessions.db-wal": 0o600, "sessions.db-shm": 0o600}
    assert made == [0o700, 0o700]
    [warning] = [e for e in _events(directory / "second.log") if e.get("event") == "session_store_not_private"]
    assert (warning["level"], warning["path"], warning["mode"]) == ("warning", str(database), "0644")
    assert warning["fix"] == f"chmod 600 {database}"
    assert kept.status_code == 200, "Minato still starts, with its conversations"
    assert stat.S_IMODE(database.stat().st_mode) == 0o644, "the operator's file keeps its mode"
    assert not [e for e in _events(directory / "first.log") if e.get("event") == "session_store_not_private"]
