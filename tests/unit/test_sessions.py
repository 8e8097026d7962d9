"""Conversation stores and trimming without the app: order, images over budget, the system prompt,
expiry, serialised turns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from minato.core.sessions import SessionManager
from minato.settings import Settings
from minato.state.conversations import Bounds, Caps, StoredMessage, trim_plan
from minato.state.memory import LocalTurnLocks, MemoryStore
from minato.state.protocols import SessionStore
from minato.state.sqlite.conversations import SqliteStore
from tests.support.waiting import settled

pytestmark = pytest.mark.anyio
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
        await settled(lambda: turns._locks[("", "a")].users == 2, "the second turn waiting for the lock")
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
        await settled(lambda: turns._locks[("", "s")].users == 2, "the delete waiting for the lock")
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
