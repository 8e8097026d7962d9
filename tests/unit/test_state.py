"""The homes of the shared state: one process (memory), the workers of one machine (SQLite), the choice.

Two :class:`SqliteState` on one file in one test process are two workers: they share nothing but
the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from minato.auth.caller import Caller, Role
from minato.core.sessions import SessionManager
from minato.errors import SettingsError, StateUnavailableError
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.concurrency import LocalKeyConcurrency
from minato.state.homes import open_state
from minato.state.memory import LocalAffinity, LocalRateLimiter, LocalTurnLocks, MemoryHealth, MemoryStore, TokenQuota
from minato.state.protocols import SharedState
from minato.state.sqlite.conversations import SqliteStore
from minato.state.sqlite.home import SqliteState
from minato.state.sqlite.tables import UNAVAILABLE
from minato.state.sqlite.turns import SqliteLeaseStore
from minato.state.usage import MemoryUsage
from minato.state.windows import Standing
from tests.support.clocks import ManualClock
from tests.support.holding import cancel_while_holding

pytestmark = pytest.mark.anyio
QUOTA_CALLER = Caller(fingerprint="f00d", role=Role.USER, name="q", tokens_per_day=10)


# -- one process ------------------------------------------------------------------------------


async def _waiting_for(turns: LocalTurnLocks, key: tuple[str, str], users: int) -> None:
    """Wait until ``users`` turns hold or wait for the conversation ``key`` (a bounded wait)."""
    deadline = time.monotonic() + 5
    while (entry := turns._locks.get(key)) is None or entry.users < users:
        assert time.monotonic() < deadline, "the turn never queued"
        await asyncio.sleep(0.001)


async def test_local_turns_run_one_at_a_time_per_conversation_and_leave_nothing_behind() -> None:
    turns = LocalTurnLocks()
    first = await turns.acquire("", "a")
    second = asyncio.ensure_future(turns.acquire("", "a"))
    other = await asyncio.wait_for(turns.acquire("", "b"), timeout=1)
    await _waiting_for(turns, ("", "a"), 2)
    assert not second.done(), "the second turn on a conversation waits for the first"

    first.release()
    first.release()  # idempotent: it must not release the second turn's holding
    waited = await asyncio.wait_for(second, timeout=1)
    third = asyncio.ensure_future(turns.acquire("", "a"))
    await _waiting_for(turns, ("", "a"), 2)
    assert not third.done(), "a second release of the first holding released nothing"

    waited.release()
    (await asyncio.wait_for(third, timeout=1)).release()
    other.release()
    assert turns._locks == {}


async def test_a_cancelled_wait_for_a_local_turn_holds_nothing() -> None:
    turns = LocalTurnLocks()
    held = await turns.acquire("", "a")
    waiting = asyncio.ensure_future(turns.acquire("", "a"))
    await _waiting_for(turns, ("", "a"), 2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.release()

    (await asyncio.wait_for(turns.acquire("", "a"), timeout=1)).release()
    assert turns._locks == {}


async def test_the_local_rate_limiter_admits_a_bucket_then_says_how_long_to_wait() -> None:
    limiter = LocalRateLimiter()

    waits = [(await limiter.check("k", 2)).wait for _ in range(3)]

    assert waits[:2] == [0.0, 0.0]
    assert 0 < waits[2] <= 30.0, "one request comes back every 30 s at 2 a minute"
    assert (await limiter.check("other", 2)).wait == 0.0, "buckets are per key"


async def test_local_affinity_forgets_after_the_ttl_and_beyond_its_bound() -> None:
    now = [1000.0]
    affinity = LocalAffinity(max_entries=2, ttl=60, clock=lambda: now[0])
    await affinity.put("a", "h1:11434")
    await affinity.put("b", "h2:11434")
    await affinity.put("a", "h3:11434")  # put again: now the most recent
    await affinity.put("c", "h1:11434")

    assert await affinity.get("a") == "h3:11434"
    assert await affinity.get("b") is None, "the least recently put went first"
    assert await affinity.get("c") == "h1:11434"
    now[0] += 60
    assert await affinity.get("a") is None
    assert affinity._backends == {"c": ("h1:11434", 1060.0)}


async def test_memory_health_always_answers() -> None:
    health = MemoryHealth()

    assert health.name == "memory"
    assert await health.ping() is None


# -- the workers of one machine (SQLite) ----------------------------------------------------


@asynccontextmanager
async def _workers(
    path: Path, count: int = 2, *, busy_timeout: float = 5.0, clock: ManualClock | None = None, **overrides: float
) -> AsyncIterator[list[SqliteState]]:
    """``count`` workers sharing the file at ``path``; with ``clock``, their time is the test's to move."""
    settings = Settings(session_store=str(path), workers=2, **overrides)  # type: ignore[arg-type]
    timing: dict[str, Any] = {} if clock is None else {"clock": clock.time, "sleep": clock.sleep}
    states = [SqliteState(path, settings, busy_timeout=busy_timeout, **timing) for _ in range(count)]
    for state in states:
        await state.open()
    try:
        yield states
    finally:
        for state in states:
            await state.close()


def _leases(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT owner, session_id, token FROM state_leases ORDER BY session_id").fetchall()


async def _queued(state: SqliteState, key: tuple[str, str], users: int) -> None:
    """Wait until ``users`` turns of this worker hold or wait for the conversation ``key``."""
    await _waiting_for(state.turns._local, key, users)


async def _settled(state: SqliteState) -> None:
    """Wait until the leases ``state`` is giving back are given back."""
    await state.turns._pending.wait(None)


async def test_one_lease_at_a_time_across_two_workers(tmp_path: Path) -> None:
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", clock=clock) as (one, two):
        held = await one.turns.acquire("o", "s")
        waiting = asyncio.ensure_future(two.turns.acquire("o", "s"))
        elsewhere = await asyncio.wait_for(two.turns.acquire("o", "other"), timeout=2)
        await clock.until_asleep(waiting)
        await clock.advance(10 * Settings().turn_lease)  # the waiter polls on and on; the holder renews
        assert not waiting.done(), "the other worker waits for the lease"

        held.release()
        await clock.advance(1.0)  # its next poll
        taken = await asyncio.wait_for(waiting, timeout=2)
        taken.release()
        elsewhere.release()
        await _settled(two)

        assert _leases(tmp_path / "s.db") == []


async def test_a_dead_holders_lease_expires_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = ManualClock()
    async with _workers(path, 1, clock=clock) as (survivor,):
        with sqlite3.connect(path) as db:  # a worker that took the lease, then died
            db.execute("INSERT INTO state_leases VALUES ('o', 's', 'dead', ?)", (clock.now + 0.5,))
        waiting = asyncio.ensure_future(survivor.turns.acquire("o", "s"))
        await clock.until_asleep(waiting)
        await clock.advance(0.45)
        assert not waiting.done(), "the lease is still alive"

        await clock.advance(0.2)
        taken = await asyncio.wait_for(waiting, timeout=5)

        assert [token for _, _, token in _leases(path)] != ["dead"]
        taken.release()


async def test_a_held_lease_is_renewed_past_its_life(tmp_path: Path) -> None:
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", clock=clock, turn_lease=0.3) as (one, two):
        held = await one.turns.acquire("o", "s")
        waiting = asyncio.ensure_future(two.turns.acquire("o", "s"))
        await clock.until_asleep(waiting)
        await clock.advance(10 * 0.3)  # ten lease lives: each renewal ran, and each poll after it
        assert not waiting.done(), "the renewed lease still holds the conversation"

        held.release()
        await clock.advance(1.0)
        (await asyncio.wait_for(waiting, timeout=2)).release()


async def test_a_lease_taken_again_by_its_holder_stays_its_own(tmp_path: Path) -> None:
    """A take sent again (its answer lost with a broken connection) must not lock its own holder out."""
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", 1, clock=clock) as (one,):
        store = SqliteLeaseStore(one._tables, 30.0)

        assert await store.take(("o", "s"), "mine")
        assert await store.take(("o", "s"), "mine"), "taken again by the same holding"
        assert not await store.take(("o", "s"), "theirs")
        clock.now += 31.0
        assert await store.take(("o", "s"), "theirs"), "once expired, it is free for another"
        assert not await store.extend(("o", "s"), "mine"), "and lost to its first holder"
        await store.delete(("o", "s"), "mine")
        assert _leases(tmp_path / "s.db") == [("o", "s", "theirs")], "a holding deletes only its own lease"


async def test_a_release_by_a_holding_that_lost_its_lease_deletes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1) as (one,):
        held = await one.turns.acquire("o", "s")
        with sqlite3.connect(path) as db:  # it expired, and another worker took it
            db.execute("UPDATE state_leases SET token = 'theirs'")

        held.release()
        await _settled(one)

        assert _leases(path) == [("o", "s", "theirs")]


async def test_a_cancelled_wait_for_a_lease_holds_nothing(tmp_path: Path) -> None:
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", clock=clock) as (one, two):
        held = await one.turns.acquire("o", "s")
        waiting = asyncio.ensure_future(two.turns.acquire("o", "s"))
        await clock.until_asleep(waiting)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.release()
        await _settled(one)

        (await asyncio.wait_for(two.turns.acquire("o", "s"), timeout=2)).release()
        await _settled(two)
        assert two.turns._local._locks == {}
        assert _leases(tmp_path / "s.db") == []


async def test_a_lease_is_given_back_even_when_its_request_is_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1) as (one,):
        await cancel_while_holding(lambda: one.turns.acquire("o", "s"), 2)
        await _settled(one)

        assert _leases(path) == []


async def test_concurrent_turns_in_two_workers_each_see_every_earlier_turn(tmp_path: Path) -> None:
    settings = Settings(session_store=str(tmp_path / "s.db"), workers=2)
    async with open_state(settings, Metrics()) as one, open_state(settings, Metrics()) as two:
        managers = [SessionManager(state.store, state.turns, settings) for state in (one, two)]

        async def turn(n: int) -> int:
            held = await managers[n % 2].begin("o", "s")
            try:
                seen = len(held.history())
                await asyncio.sleep(0.01)  # the answer takes a while
                await held.commit("m", f"q{n}", [], f"a{n}")
                return seen
            finally:
                held.release()

        seen = await asyncio.wait_for(asyncio.gather(*(turn(n) for n in range(10))), timeout=30)
        session = await one.store.get("o", "s")

    assert sorted(seen) == [2 * k for k in range(10)], "each turn saw all the turns before it"
    assert session is not None
    assert len(session.messages) == 20


async def test_a_workers_own_next_turn_starts_once_its_lease_is_given_back(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = ManualClock()
    async with _workers(path, 1, clock=clock) as (one,):
        held = await one.turns.acquire("o", "s")
        following = asyncio.ensure_future(one.turns.acquire("o", "s"))
        await _queued(one, ("o", "s"), 2)
        assert not following.done(), "it waits for this worker's own turn"

        held.release()
        taken = await asyncio.wait_for(following, timeout=2)  # the clock never moved: no poll, no wait

        assert len(_leases(path)) == 1, "the next turn holds its own lease"
        taken.release()


async def test_the_rate_limit_is_shared_by_the_workers(tmp_path: Path) -> None:
    async with _workers(tmp_path / "s.db") as (one, two):
        waits = [(await (one if n % 2 else two).limiter.check("k", 3)).wait for n in range(8)]

        assert waits.count(0.0) == 3, "3 a minute across both workers, not 3 each"
        assert all(0 < wait <= 20.0 for wait in waits if wait)
        assert (await one.limiter.check("other", 3)).wait == 0.0


async def test_the_token_quota_is_shared_by_the_workers(tmp_path: Path) -> None:
    async with _workers(tmp_path / "s.db") as (one, two):
        await one.quota.charge(QUOTA_CALLER, 6)
        assert (await two.quota.check(QUOTA_CALLER))[:2] == (0.0, QUOTA_CALLER.tokens_per_day - 6)
        await two.quota.charge(QUOTA_CALLER, 4)

        wait, left, _ = await one.quota.check(QUOTA_CALLER)

        assert 24 * 3600 - 60 <= wait <= 24 * 3600 + 60
        assert left == 0
        assert (await two.quota.check(QUOTA_CALLER)).wait > 0
        other = Caller(fingerprint="beef", role=Role.USER, name="o", tokens_per_day=10)
        assert await two.quota.check(other) == Standing(0.0, 10, 0.0)
        unlimited = Caller(fingerprint="cafe", role=Role.USER, name="u")
        await one.quota.charge(unlimited, 1_000)
        assert await one.quota.check(
            Caller(fingerprint="cafe", role=Role.USER, name="u", tokens_per_day=1)
        ) == Standing(0.0, 1, 0.0)


async def test_affinity_is_shared_by_the_workers_and_expires(tmp_path: Path) -> None:
    clock = ManualClock()
    async with _workers(tmp_path / "s.db", clock=clock, session_ttl=0.3) as (one, two):
        await one.affinity.put("o/s", "h1:11434")
        await two.affinity.put("o/t", "h2:11434")

        assert await two.affinity.get("o/s") == "h1:11434"
        assert await one.affinity.get("o/t") == "h2:11434"
        assert await one.affinity.get("o/unknown") is None
        await clock.advance(0.4)
        assert await two.affinity.get("o/s") is None


async def test_a_locked_database_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1, busy_timeout=0.05) as (one,):
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another worker holding the write lock for too long
        try:
            with pytest.raises(StateUnavailableError) as refused:
                await one.limiter.check("k", 3)
            with pytest.raises(StateUnavailableError):
                await one.turns.acquire("o", "s")
            with pytest.raises(StateUnavailableError):
                await one.quota.charge(QUOTA_CALLER, 1)
            with pytest.raises(StateUnavailableError):
                await one.affinity.put("o/s", "h1:11434")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        assert refused.value.status_code == 503
        assert refused.value.headers["Retry-After"] == "5"
        assert "locked" not in refused.value.detail, "Minato's words, not SQLite's"
        assert one.turns._local._locks == {}, "a turn that could not take its lease holds nothing"
        assert (await one.limiter.check("k", 3)).wait == 0.0, "it answers again once the lock is gone"


async def test_a_broken_database_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with _workers(path, 1) as (one,):
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE state_buckets")
            db.execute("DROP TABLE state_quota")

        with pytest.raises(StateUnavailableError):
            await one.limiter.check("k", 3)
        with pytest.raises(StateUnavailableError):
            await one.quota.check(QUOTA_CALLER)
        assert await one.health.ping() is None, "the leases still answer"
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE state_leases")
        assert await one.health.ping() == UNAVAILABLE


async def test_a_file_that_is_not_a_database_cannot_be_opened_as_state(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database, " * 100)
    state = SqliteState(path, Settings(session_store=str(path)))

    with pytest.raises(StateUnavailableError):
        await state.open()


async def test_the_state_tables_live_beside_the_conversations(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    await store.open()
    try:
        async with _workers(path, 1) as (one,):
            (await one.turns.acquire("o", "s")).release()
        with sqlite3.connect(path) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        await store.close()

    assert {"sessions", "messages", "state_leases", "state_buckets", "state_quota", "state_affinity"} <= tables
    assert version == 3, "the sessions schema version is the sessions' own"


# -- the choice of home ---------------------------------------------------------------------


async def test_one_worker_keeps_its_state_in_memory_around_the_configured_store(tmp_path: Path) -> None:
    async with open_state(Settings(session_store="memory://"), Metrics()) as state:
        assert state.health.name == "memory"
        assert isinstance(state.store, MemoryStore)
        assert isinstance(state.quota, TokenQuota)

    async with open_state(Settings(session_store=str(tmp_path / "one.db")), Metrics()) as state:
        assert state.health.name == "memory"
        assert isinstance(state.store, SqliteStore)
        await state.store.get("", "s")  # opened


async def test_several_workers_share_their_state_in_the_conversations_file(tmp_path: Path) -> None:
    path = tmp_path / "two.db"
    settings = Settings(session_store=str(path), workers=2)

    async with open_state(settings, Metrics()) as state, open_state(settings, Metrics()) as other:
        assert state.health.name == "sqlite"
        assert await state.health.ping() is None
        assert (await state.limiter.check("k", 1)).wait == 0.0
        assert (await other.limiter.check("k", 1)).wait > 0, "the second worker sees the first one's request"
        assert isinstance(state.store, SqliteStore)
        assert state.store.path == path


async def test_several_workers_with_conversations_in_memory_are_refused() -> None:
    with pytest.raises(SettingsError, match="MINATO_REDIS_URL"):
        async with open_state(Settings(session_store="memory://", workers=2), Metrics()):
            pass


async def test_a_redis_url_opens_the_redis_home(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[Settings, Metrics]] = []
    fake = SharedState(
        store=MemoryStore(),
        turns=LocalTurnLocks(),
        limiter=LocalRateLimiter(),
        quota=TokenQuota(),
        affinity=LocalAffinity(1, 1),
        health=MemoryHealth(),
        concurrency=LocalKeyConcurrency(),
        usage=MemoryUsage(),
    )

    @asynccontextmanager
    async def open_redis_state(settings: Settings, metrics: Metrics) -> AsyncIterator[SharedState]:
        opened.append((settings, metrics))
        yield fake

    module = types.ModuleType("minato.state.redis.home")
    module.open_redis_state = open_redis_state  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "minato.state.redis.home", module)
    settings = Settings(redis_url="redis://127.0.0.1:1/0", session_store="memory://", workers=4)
    metrics = Metrics()

    async with open_state(settings, metrics) as state:
        assert state is fake

    assert opened == [(settings, metrics)]
