"""``GET /queue``: every key's generations for an admin, only its own for a user key, nothing for a
metrics key; and generations from Minato's routes and the doors wait their key's turn there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.auth.caller import Caller, Role
from minato.auth.keyring import Keyring
from minato.core.admission import Admission, Slot
from minato.settings import Settings
from minato.web.app import create_app
from tests.support.keyfiles import ALICE, BOB, CAROL, KEYS_FILE, _file
from tests.support.payloads import chat_answer
from tests.support.served_ollama import ServedOllama
from tests.support.waiting import settled

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
SCRAPER = "metrics-only-key-5"
#: Who holds the one slot while the others queue (not a configured key: only the report sees it).
HOLDER = Caller(fingerprint="0" * 12, role=Role.ADMIN, name="holder")


def _as(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


Queued = tuple[Client, Admission, list[asyncio.Task[Slot]]]


@asynccontextmanager
async def queued(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Queued]:
    """One slot, held; alice queues two generations, then carol one.

    The test client runs the app in a thread of its own and blocks while a request is in flight, so
    the waiting generations are queued here, for the keys the app knows, and the report read over HTTP
    (the end-to-end tests queue them over HTTP)."""
    ollama.post("/api/chat").respond(200, json=chat_answer())
    configured = msgspec.structs.replace(
        settings, keys_file=_file(tmp_path, KEYS_FILE), metrics_keys=(SCRAPER,), max_generations=1, max_queue=10
    )
    keyring = Keyring.from_settings(configured)
    alice, carol = keyring.identify(ALICE), keyring.identify(CAROL)
    assert alice is not None
    assert carol is not None
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        admission: Admission = app.state.runtime_slot.runtime.admission
        held = admission.try_acquire("llama3.2:latest", HOLDER)
        assert held is not None
        asking: list[asyncio.Task[Slot]] = []
        for caller in (alice, alice, carol):
            waiting = admission.waiting
            asking.append(asyncio.ensure_future(admission.acquire("llama3.2:latest", caller)))
            await settled(lambda waiting=waiting: admission.waiting == waiting + 1, "queued")  # type: ignore[misc]
        try:
            yield client, admission, asking
        finally:
            held.release()
            for granted in asyncio.as_completed(asking):  # in the order they are served
                (await granted).release()
            assert admission.running == admission.waiting == 0


async def test_an_admin_sees_every_running_and_waiting_generation_in_the_order_they_will_be_served(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    async with queued(settings, ollama, tmp_path) as (client, _, _):
        response = await client.get("/queue", headers=_as(BOB))

        assert response.status_code == 200
        body = response.json()
        assert [(r["model"], r["key"]) for r in body["running"]] == [("llama3.2:latest", "holder")]
        # alice's second request waits behind carol's first: turns go by key, not by arrival.
        assert [(w["key"], w["position"]) for w in body["waiting"]] == [("alice", 1), ("carol", 2), ("alice", 3)]
        assert all(w["model"] == "llama3.2:latest" and w["seconds"] >= 0 for w in body["waiting"])
        assert body["totals"] == {"running": 1, "waiting": 3}
        assert body["max_generations"] == 1
        assert isinstance(body["pid"], int)


async def test_an_admin_may_ask_for_one_key_and_an_invented_name_finds_nothing(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    async with queued(settings, ollama, tmp_path) as (client, _, _):
        carol = (await client.get("/queue", params={"key": "carol"}, headers=_as(BOB))).json()
        nobody = (await client.get("/queue", params={"key": "mallory"}, headers=_as(BOB))).json()

        assert [(w["key"], w["position"]) for w in carol["waiting"]] == [("carol", 2)]
        assert nobody["waiting"] == nobody["running"] == []
        assert nobody["totals"] == {"running": 0, "waiting": 0}


async def test_a_user_key_sees_only_its_own_generations_with_their_positions(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    async with queued(settings, ollama, tmp_path) as (client, _, _):
        alice = (await client.get("/queue", headers=_as(ALICE))).json()
        carol = (await client.get("/queue", headers=_as(CAROL))).json()

        assert [(w["key"], w["position"]) for w in alice["waiting"]] == [("alice", 1), ("alice", 3)]
        assert alice["running"] == []
        assert alice["totals"] == {"running": 0, "waiting": 2}
        assert [(w["key"], w["position"]) for w in carol["waiting"]] == [("carol", 2)]
        assert "holder" not in str(carol)
        assert "alice" not in str(carol)


async def test_a_user_key_naming_another_key_gets_a_403_and_nothing_of_it(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    async with queued(settings, ollama, tmp_path) as (client, _, _):
        response = await client.get("/queue", params={"key": "alice"}, headers=_as(CAROL))

        assert response.status_code == 403
        assert "only its own" in response.json()["detail"]
        assert "llama3.2" not in response.text


async def test_a_metrics_key_and_a_stranger_may_not_read_the_queue(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    async with queued(settings, ollama, tmp_path) as (client, _, _):
        scraper = await client.get("/queue", headers=_as(SCRAPER))
        stranger = await client.get("/queue", headers=_as("not-a-key"))
        anonymous = await client.get("/queue")

        assert scraper.status_code == 403
        assert stranger.status_code == 401
        assert anonymous.status_code == 401


async def test_the_waiting_are_counted_by_key_and_their_wait_is_observed(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    async with queued(settings, ollama, tmp_path) as (client, _, _):
        metrics = (await client.get("/metrics", headers=_as(BOB))).text

        assert 'minato_queue_waiting{key="alice"} 2.0' in metrics
        assert 'minato_queue_waiting{key="carol"} 1.0' in metrics
        assert "minato_queue_depth 3.0" in metrics
