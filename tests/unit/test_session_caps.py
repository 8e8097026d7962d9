"""How many conversations are kept: one key's cap, the store's cap, and who loses what, in every home.

Each test runs on the three homes of conversations (memory, SQLite, Redis), wired as Minato wires
them (:func:`minato.state.open_state`), through the manager the routes use.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from minato.core.sessions import SessionManager
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.conversations import Bounds, Caps, StoredMessage
from minato.state.homes import open_state
from minato.state.protocols import SessionStore

pytestmark = pytest.mark.anyio

A, B, C, D = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"
Home = Callable[..., contextlib.AbstractAsyncContextManager[SessionManager]]
WIDE = Bounds(max_messages=100, image_budget=10**6)
ROOMY = Caps(max_sessions=10_000, max_per_key=10_000)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    """Open a manager on one home of conversations with the given settings; every call in one test
    reaches the same conversations (a new memory home starts empty, so memory tests open it once)."""
    where: dict[str, Any] = {"session_store": "memory://"}
    if request.param == "sqlite":
        where = {"session_store": str(tmp_path / "s.db")}
    elif request.param == "redis":
        where = {"session_store": "memory://", "redis_url": request.getfixturevalue("redis_url")}

    @contextlib.asynccontextmanager
    async def open_home(**overrides: Any) -> AsyncIterator[SessionManager]:
        settings = Settings(**(where | overrides))
        async with open_state(settings, Metrics()) as state:
            yield SessionManager(state.store, state.turns, settings)

    return open_home


async def _talk(manager: SessionManager, owner: str, session_id: str, text: str = "hello") -> None:
    """One completed exchange, as a generation route records it."""
    turn = await manager.begin(owner, session_id)
    try:
        await turn.commit("m", text, [], f"answer to {text}")
    finally:
        turn.release()


async def _ids(manager: SessionManager, owner: str | None) -> list[str]:
    """One owner's conversations (``None``: everyone's, as ``owner/id``), most recently active first."""
    page, total = await manager.page(owner, 0, 1000)
    assert total == len(page)
    return [s.id if owner is not None else f"{s.owner}/{s.id}" for s in page]


async def test_a_key_that_makes_many_conversations_evicts_only_its_own(home: Home) -> None:
    async with home(max_sessions=4) as manager:
        await _talk(manager, B, "b-1", "first")
        await _talk(manager, B, "b-1", "second")
        await manager.set_system_prompt(B, "b-2", "Be brief.")
        for n in range(12):
            await _talk(manager, A, f"a-{n}")

        theirs = await _ids(manager, B)
        mine = await _ids(manager, A)
        kept = await manager.get(B, "b-1")
        dropped = await manager.expire()

    assert theirs == ["b-2", "b-1"], "the victim key's conversations all survive"
    assert kept is not None
    assert [m.content for m in kept.messages] == ["first", "answer to first", "second", "answer to second"]
    assert mine == ["a-11", "a-10"], "the flooding key keeps its most recent, within the store's cap"
    assert dropped == 0, "every write kept the store within its cap"


async def test_the_per_key_cap_evicts_the_least_recently_active_of_that_key_only(home: Home) -> None:
    async with home(max_sessions_per_key=3) as manager:
        await _talk(manager, B, "b-1")
        for n in range(3):
            await _talk(manager, A, f"a-{n}")
        await _talk(manager, A, "a-0", "again")  # a-0 is now A's most recently active
        await manager.set_system_prompt(A, "a-3", "new")  # a system prompt creates one too
        after_prompt = await _ids(manager, A)
        await _talk(manager, A, "a-4")

        mine = await _ids(manager, A)
        theirs = await _ids(manager, B)

    assert after_prompt == ["a-3", "a-0", "a-2"], "a-1 was A's least recently active"
    assert mine == ["a-4", "a-3", "a-0"]
    assert theirs == ["b-1"]


async def test_the_store_cap_takes_from_the_key_holding_the_most(home: Home) -> None:
    async with home(max_sessions=6) as manager:
        for owner, session_id in [(B, "b-1"), (B, "b-2"), (C, "c-1"), (A, "a-1"), (A, "a-2"), (A, "a-3")]:
            await _talk(manager, owner, session_id)

        await _talk(manager, C, "c-2")  # 7 > 6: A holds the most
        after_c = await _ids(manager, None)
        await _talk(manager, D, "d-1")  # A, B and C hold 2 each: B's least recently active is the oldest
        after_d = await _ids(manager, None)

    assert after_c == [f"{C}/c-2", f"{A}/a-3", f"{A}/a-2", f"{C}/c-1", f"{B}/b-2", f"{B}/b-1"]
    assert after_d == [f"{D}/d-1", f"{C}/c-2", f"{A}/a-3", f"{A}/a-2", f"{C}/c-1", f"{B}/b-2"]


async def test_the_keyless_owner_is_bound_only_by_the_store_cap(home: Home) -> None:
    async with home(max_sessions=5, max_sessions_per_key=2) as manager:
        for n in range(4):
            await _talk(manager, "", f"s-{n}")
        within = await _ids(manager, "")
        for n in range(4, 7):
            await _talk(manager, "", f"s-{n}")

        everyone = await _ids(manager, "")

    assert within == ["s-3", "s-2", "s-1", "s-0"], "more than the per-key cap, all kept"
    assert everyone == ["s-6", "s-5", "s-4", "s-3", "s-2"]


async def test_the_sweep_brings_a_store_over_both_caps_within_them(home: Home) -> None:
    async with home() as roomy:
        for owner, count in [(B, 2), (C, 3), (A, 6), ("", 3)]:
            for n in range(count):
                await _talk(roomy, owner, f"{owner[:1] or 'k'}-{n}")
        tight = SessionManager(
            roomy.store, roomy.turns, Settings(session_store="memory://", max_sessions=7, max_sessions_per_key=4)
        )

        dropped = await tight.expire()
        left = {owner: await _ids(roomy, owner) for owner in (A, B, C, "")}

    # Per key first: A 6 -> 4 ("" is exempt). Then 12 > 7: A (4) -> 3; A, C and "" hold 3 each and C's
    # least recently active is the oldest -> C 2; then A -> 2, then "" -> 2; then all hold 2 and B's
    # least recently active is the oldest of all -> B 1.
    assert dropped == 7
    assert left == {A: ["a-5", "a-4"], B: ["b-1"], C: ["c-2", "c-1"], "": ["k-2", "k-1"]}


# -- the stores themselves, with times chosen by the test ---------------------------------------------------


def _pair(n: float) -> list[StoredMessage]:
    return [StoredMessage(role="user", content=f"q{n}", at=n), StoredMessage(role="assistant", content="a", at=n)]


async def _listing(store: SessionStore) -> list[tuple[str, str, float]]:
    page, total = await store.list(None, 0, 1000)
    assert total == len(page)
    return [(s.owner, s.id, s.last_active) for s in page]


@pytest.mark.parametrize("write", ["append", "set_system_prompt"])
async def test_a_write_never_evicts_the_conversation_it_writes(home: Home, write: str) -> None:
    async def put(store: SessionStore, owner: str, session_id: str, now: float, caps: Caps) -> None:
        if write == "append":
            await store.append(owner, session_id, _pair(now), WIDE, caps=caps, now=now)
        else:
            await store.set_system_prompt(owner, session_id, "hi", caps=caps, now=now)

    async with home() as manager:
        store = manager.store
        await put(store, A, "newer", 100, ROOMY)
        await put(store, A, "older", 50, Caps(max_sessions=100, max_per_key=1))  # a clock behind the first
        per_key = await _listing(store)
        await put(store, "", "newest", 200, ROOMY)
        await put(store, B, "oldest", 10, Caps(max_sessions=1, max_per_key=1))
        store_cap = await _listing(store)

    assert per_key == [(A, "older", 50)], "A's other conversation went, though it was more recent"
    assert store_cap == [(B, "oldest", 10)]


async def test_ties_go_to_the_greatest_id_and_then_the_smallest_owner_as_listings_end(home: Home) -> None:
    async with home() as manager:
        store = manager.store
        for owner, session_id in [(A, "x"), (A, "y"), (B, "x"), (B, "y")]:
            await store.append(owner, session_id, _pair(5), WIDE, caps=ROOMY, now=5)
        await store.append(A, "z", _pair(5), WIDE, caps=Caps(max_sessions=100, max_per_key=2), now=5)
        per_key = await _listing(store)
        await store.append(C, "w", _pair(9), WIDE, caps=Caps(max_sessions=4, max_per_key=2), now=9)
        store_cap = await _listing(store)

    # A's "z" is the one written, so of A's "x" and "y" (tied) the greatest id goes.
    assert per_key == [(A, "x", 5), (B, "x", 5), (B, "y", 5), (A, "z", 5)]
    # A and B hold 2 each, their oldest are tied: the smallest owner (A) loses its greatest id ("z").
    assert store_cap == [(C, "w", 9), (A, "x", 5), (B, "x", 5), (B, "y", 5)]


async def test_a_conversation_the_caps_evict_takes_its_images_with_it(home: Home) -> None:
    async with home() as manager:
        store = manager.store
        with_image = [StoredMessage(role="user", content="look", images=["I" * 50], image_count=1, at=1)]
        await store.append(A, "pictures", with_image, WIDE, caps=ROOMY, now=1)
        await store.append(A, "words", _pair(2), WIDE, caps=Caps(max_sessions=10, max_per_key=1), now=2)
        await store.append(B, "pictures", with_image, WIDE, caps=ROOMY, now=3)
        await store.append(B, "more", _pair(4), WIDE, caps=ROOMY, now=4)
        await store.append(C, "c", with_image, WIDE, caps=Caps(max_sessions=2, max_per_key=10), now=5)

        left = await _listing(store)
        stripped = await store.enforce_image_budget(50)
        kept = await store.get(C, "c")

    # A's pictures went by A's own cap; B's by the store's (B held the most), then A's words (all tied).
    assert left == [(C, "c", 5), (B, "more", 4)]
    assert stripped == 0, "only C's image is left to count"
    assert kept is not None
    assert kept.messages[0].images == ["I" * 50]


class Model:
    """The rules of :class:`~minato.state.conversations.Caps`, as plainly as they can be written."""

    def __init__(self) -> None:
        self.active: dict[tuple[str, str], float] = {}

    def _least_recent(self, owner: str, keep: tuple[str, str] | None) -> tuple[str, str] | None:
        mine = [k for k in self.active if k[0] == owner and k != keep]
        mine.sort(key=lambda k: (-self.active[k], k[1]))  # as a listing shows them
        return mine[-1] if mine else None

    def _make_room(self, owners: list[str], caps: Caps, keep: tuple[str, str] | None) -> int:
        gone = 0
        for owner in owners:
            while owner and sum(k[0] == owner for k in self.active) > caps.max_per_key:
                victim = self._least_recent(owner, keep)
                assert victim is not None
                del self.active[victim]
                gone += 1
        while len(self.active) > caps.max_sessions:
            holders = sorted(
                {k[0] for k in self.active},
                key=lambda o: (
                    -sum(k[0] == o for k in self.active),
                    min(t for k, t in self.active.items() if k[0] == o),
                    o,
                ),
            )
            victim = next(v for v in (self._least_recent(o, keep) for o in holders) if v is not None)
            del self.active[victim]
            gone += 1
        return gone

    def write(self, owner: str, session_id: str, now: float, caps: Caps) -> None:
        self.active[owner, session_id] = now
        self._make_room([owner], caps, keep=(owner, session_id))

    def delete(self, owner: str, session_id: str) -> None:
        self.active.pop((owner, session_id), None)

    def expire(self, idle_before: float, caps: Caps) -> int:
        idle = [k for k, t in self.active.items() if t < idle_before]
        for k in idle:
            del self.active[k]
        owners = sorted({k[0] for k in self.active})
        return len(idle) + self._make_room(owners, caps, keep=None)

    def listing(self) -> list[tuple[str, str, float]]:
        return sorted(((o, i, t) for (o, i), t in self.active.items()), key=lambda r: (-r[2], r[1], r[0]))


@pytest.mark.parametrize("seed", range(4))
async def test_every_home_follows_the_rules_through_a_random_run(home: Home, seed: int) -> None:
    rng = random.Random(seed)
    caps = Caps(max_sessions=rng.randint(3, 8), max_per_key=rng.randint(1, 4))
    model = Model()
    async with home() as manager:
        store = manager.store
        for step in range(150):
            owner, session_id = rng.choice(["", A, B, C, D]), rng.choice("pqrstuv")
            now = float(rng.randint(1, 12))  # many ties, and clocks that go back
            action = rng.random()
            if action < 0.6:
                await store.append(owner, session_id, _pair(now), WIDE, caps=caps, now=now)
                model.write(owner, session_id, now, caps)
            elif action < 0.8:
                await store.set_system_prompt(owner, session_id, "hi", caps=caps, now=now)
                model.write(owner, session_id, now, caps)
            elif action < 0.9:
                await store.delete(owner, session_id)
                model.delete(owner, session_id)
            else:
                tighter = Caps(max_sessions=rng.randint(1, caps.max_sessions), max_per_key=rng.randint(1, 4))
                idle_before = float(rng.randint(0, 3))
                assert await store.expire(idle_before, tighter) == model.expire(idle_before, tighter), step
            assert await _listing(store) == model.listing(), f"step {step}"
