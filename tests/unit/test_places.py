"""A key's bound on the generations it runs at once, across the workers of one machine (the SQLite home).

Two :class:`SqliteState` on one file in one test process are two workers: they share nothing but the file.
Their time is a :class:`ManualClock`: a poll or a renewal happens only when the test moves it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from minato.errors import StateUnavailableError
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.homes import open_state
from minato.state.places import KeyBound, PlaceStore, SharedKeyConcurrency
from minato.state.protocols import HeldTurn
from minato.state.sqlite.home import SqliteState
from minato.state.sqlite.places import SqlitePlaceStore
from tests.support.clocks import ManualClock
from tests.support.holding import cancel_while_holding
from tests.unit.test_state import _workers

pytestmark = pytest.mark.anyio
#: A bound on waits that must end: far above what they take.
PATIENCE = 5.0


def _places(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT key, token FROM state_places ORDER BY key, token").fetchall()


def _concurrency(state: SqliteState) -> SharedKeyConcurrency:
    return state.concurrency


async def _until(done: Callable[[], bool], what: str) -> None:
    """Wait (a bounded wait) until ``done()`` is true."""
    deadline = time.monotonic() + PATIENCE
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


async def _waiting_here(state: SqliteState, key: str, count: int) -> None:
    """Wait until ``count`` requests of ``key`` wait for a place in this worker."""
    local = _concurrency(state)._local
    await _until(lambda: len(local._waiting.get(key, ())) >= count, "the request never queued in its worker")


async def _asking(state: SqliteState, key: str, count: int) -> None:
    """Wait until ``count`` requests of ``key`` ask the home, or wait to ask it, in this worker."""
    locks = _concurrency(state)._asking._locks
    await _until(lambda: (entry := locks.get(("", key))) is not None and entry.users >= count, "never asked")


async def _settled(state: SqliteState) -> None:
    """Wait until the places ``state`` is giving back are given back."""
    await _concurrency(state)._pending.wait(None)


def _nothing_held_here(state: SqliteState) -> bool:
    concurrency = _concurrency(state)
    return not concurrency._local._running and not concurrency._local._waiting and not concurrency._asking._locks


async def test_a_keys_bound_holds_across_two_workers_while_other_keys_run_beside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = ManualClock()
    async with _workers(path, clock=clock) as (one, two):
        first = await one.concurrency.acquire("k", 2)
        second = await two.concurrency.acquire("k", 2)
        third = asyncio.ensure_future(one.concurrency.acquire("k", 2))
        other = await asyncio.wait_for(two.concurrency.acquire("other", 2), PATIENCE)
        await clock.until_asleep(third)
        await clock.advance(10 * Settings().turn_lease)  # the waiter polls on and on; the holders renew
        assert not third.done(), "two places are held: the third waits, though its worker holds only one"
        assert await one.concurrency.running("k") == await two.concurrency.running("k") == 2
        assert await one.concurrency.running("other") == 1

        second.release()  # the other worker's place
        second.release()  # idempotent
        await _settled(two)
        await clock.advance(1.0)  # the waiter's next poll
        taken = await asyncio.wait_for(third, PATIENCE)
        assert await two.concurrency.running("k") == 2

        for held in (first, taken, other):
            held.release()
        await _settled(one)
        await _settled(two)
        assert _places(path) == []
        assert _nothing_held_here(one)
        assert _nothing_held_here(two)


async def test_a_workers_requests_get_their_keys_places_in_arrival_order(tmp_path: Path) -> None:
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", clock=clock) as (one, two):
        theirs = [await two.concurrency.acquire("k", 2) for _ in range(2)]
        order: list[str] = []

        async def request(name: str) -> HeldTurn:
            held = await one.concurrency.acquire("k", 2)
            order.append(name)
            return held

        first = asyncio.ensure_future(request("a"))
        await clock.until_asleep(first)  # it polls the home
        second = asyncio.ensure_future(request("b"))
        await _asking(one, "k", 2)  # it holds this worker's second place, and waits to ask the home
        third = asyncio.ensure_future(request("c"))
        await _waiting_here(one, "k", 1)  # both of this worker's places are taken: it waits here

        for held in theirs:
            held.release()
        await _settled(two)
        await clock.advance(1.0)
        held_a, held_b = await asyncio.wait_for(asyncio.gather(first, second), PATIENCE)
        assert order == ["a", "b"]
        assert not third.done(), "both places are held"

        held_a.release()
        held_c = await asyncio.wait_for(third, PATIENCE)  # the clock never moved: no poll, no wait
        assert order == ["a", "b", "c"]
        held_b.release()
        held_c.release()


async def test_a_dead_workers_place_expires_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = ManualClock()
    async with _workers(path, 1, clock=clock) as (survivor,):
        with sqlite3.connect(path) as db:  # a worker that took the only place, then died
            db.execute("INSERT INTO state_places VALUES ('k', 'dead', ?)", (clock.now + 0.5,))
        assert await survivor.concurrency.running("k") == 1
        waiting = asyncio.ensure_future(survivor.concurrency.acquire("k", 1))
        await clock.until_asleep(waiting)
        await clock.advance(0.45)
        assert not waiting.done(), "the place is still alive"

        await clock.advance(0.2)
        taken = await asyncio.wait_for(waiting, PATIENCE)

        assert [token for _, token in _places(path)] != ["dead"]
        assert await survivor.concurrency.running("k") == 1
        taken.release()


async def test_a_held_place_is_renewed_past_its_life(tmp_path: Path) -> None:
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", clock=clock, turn_lease=0.3) as (one, two):
        held = await one.concurrency.acquire("k", 1)
        waiting = asyncio.ensure_future(two.concurrency.acquire("k", 1))
        await clock.until_asleep(waiting)
        await clock.advance(10 * 0.3)  # ten lease lives: each renewal ran, and each poll after it
        assert not waiting.done(), "the renewed place still holds the key's bound"
        assert await two.concurrency.running("k") == 1

        held.release()
        await _settled(one)
        await clock.advance(1.0)
        (await asyncio.wait_for(waiting, PATIENCE)).release()


async def test_a_cancelled_wait_for_a_place_holds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = ManualClock()
    async with _workers(path, clock=clock) as (one, two):
        held = await one.concurrency.acquire("k", 1)
        polling = asyncio.ensure_future(two.concurrency.acquire("k", 1))
        await clock.until_asleep(polling)
        queued = asyncio.ensure_future(two.concurrency.acquire("k", 1))
        await _waiting_here(two, "k", 1)
        for waiter in (queued, polling):
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        held.release()
        await _settled(one)
        await _settled(two)

        assert _places(path) == []
        assert _nothing_held_here(two)
        (await asyncio.wait_for(two.concurrency.acquire("k", 1), PATIENCE)).release()


class _AnswerLost:
    """The home's places, but the answer of a take that got through never comes back: the take waits until
    it is cancelled, or until ``answer`` is set, then fails as a timed-out call would."""

    def __init__(self, store: PlaceStore, failure: BaseException) -> None:
        self._store = store
        self._failure = failure
        self.through = asyncio.Event()
        self.answer = asyncio.Event()

    async def take(self, key: KeyBound, token: str) -> bool:
        assert await self._store.take(key, token)
        self.through.set()
        await self.answer.wait()
        raise self._failure

    async def extend(self, key: KeyBound, token: str) -> bool:
        return await self._store.extend(key, token)

    async def delete(self, key: KeyBound, token: str) -> None:
        await self._store.delete(key, token)

    async def running(self, key: str) -> int:
        return await self._store.running(key)


@pytest.mark.parametrize("failure", [None, StateUnavailableError("timed out")], ids=["cancelled", "timed-out"])
async def test_a_place_taken_though_its_answer_was_lost_is_given_back(
    tmp_path: Path, failure: BaseException | None
) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1) as (one,):
        store = _AnswerLost(SqlitePlaceStore(one._tables, 30.0), failure or AssertionError("never answered"))
        concurrency = SharedKeyConcurrency(store, 30.0)
        acquiring = asyncio.ensure_future(concurrency.acquire("k", 1))
        await asyncio.wait_for(store.through.wait(), PATIENCE)
        assert len(_places(path)) == 1, "the place was taken"
        if failure is None:
            acquiring.cancel()
        else:
            store.answer.set()
        with pytest.raises(type(failure) if failure else asyncio.CancelledError):
            await acquiring
        await concurrency.close()

        assert _places(path) == [], "and given back"
        assert not concurrency._local._running
        assert not concurrency._asking._locks


async def test_a_place_is_given_back_even_when_its_request_is_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1) as (one,):
        await cancel_while_holding(lambda: one.concurrency.acquire("k", 1), PATIENCE)
        await _settled(one)

        assert _places(path) == []
        assert _nothing_held_here(one)


async def test_a_locked_database_fails_closed_and_a_place_it_kept_expires_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = ManualClock()
    async with _workers(path, 1, busy_timeout=0.05, clock=clock) as (one,):
        held = await one.concurrency.acquire("k", 1)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another worker holding the write lock for too long
        try:
            with pytest.raises(StateUnavailableError) as refused:
                await one.concurrency.acquire("other", 1)
            await _settled(one)  # it tries to give back the place it may have taken, in vain
            with structlog.testing.capture_logs() as logs:
                held.release()
                await _settled(one)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        assert refused.value.status_code == 503
        assert refused.value.headers["Retry-After"]
        assert [e["key"] for e in logs if e["event"] == "key_place_not_released"] == ["k"]
        assert _nothing_held_here(one), "a request that could not take its place holds nothing"
        assert await one.concurrency.running("k") == 1, "the place it could not give back lives on"
        await clock.advance(Settings().turn_lease)
        assert await one.concurrency.running("k") == 0, "until it expires"
        (await asyncio.wait_for(one.concurrency.acquire("k", 1), PATIENCE)).release()


async def test_a_broken_database_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1) as (one,):
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE state_places")

        with pytest.raises(StateUnavailableError):
            await one.concurrency.acquire("k", 1)
        with pytest.raises(StateUnavailableError):
            await one.concurrency.running("k")
        assert _nothing_held_here(one)


async def test_several_workers_share_their_keys_places_through_the_conversations_file(tmp_path: Path) -> None:
    settings = Settings(session_store=str(tmp_path / "two.db"), workers=2)
    async with open_state(settings, Metrics()) as one, open_state(settings, Metrics()) as two:
        held = await one.concurrency.acquire("k", 1)
        seen = await two.concurrency.running("k")
        held.release()

    assert seen == 1
    assert _places(tmp_path / "two.db") == [], "closing the state waited for the place given back"
