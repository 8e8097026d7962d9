"""The SQLite file's thread: units of work in order, writes queued together sharing one commit (each still
its own: a failing one fails alone), a caller answered only once its write is committed.

The thread is held busy by a unit that waits for the test (a :class:`threading.Event`), so what is queued
meanwhile is queued together: no timing, no sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from minato.errors import SessionDamagedError
from minato.state.conversations import Bounds, Caps, StoredMessage
from minato.state.sqlite.conversations import SqliteStore
from minato.state.sqlite.database import GROUP_LIMIT, Database, immediately
from tests.unit.test_session_caps import ROOMY, A, B, C, Model, _listing
from tests.unit.test_session_store import DAMAGED, HEALTHY, _pair, _store_with_a_damaged_conversation

pytestmark = pytest.mark.anyio


class Traced:
    """A database of one table whose connection records every statement it runs."""

    def __init__(self, path: Path) -> None:
        self.statements: list[str] = []
        self.database = Database(path, "test-sqlite", lambda _: None, self._setup)

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
        db.set_trace_callback(self.statements.append)

    def transactions(self) -> list[str]:
        return [s for s in self.statements if s in {"BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"}]


@contextlib.asynccontextmanager
async def traced(path: Path) -> AsyncIterator[Traced]:
    subject = Traced(path)
    await subject.database.open()
    try:
        yield subject
    finally:
        await subject.database.close()


@contextlib.asynccontextmanager
async def thread_held(database: Database) -> AsyncIterator[None]:
    """Keep the database's thread busy for the block: what the block queues is queued together."""
    release, holding = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        holding.set()
        release.wait()

    held = asyncio.ensure_future(database.run(hold))
    await asyncio.to_thread(holding.wait)
    try:
        yield
    finally:
        release.set()
        await held


async def started(*calls: asyncio.Future[Any]) -> None:
    """Let freshly made tasks run up to their first wait (where they have queued their unit): the thread is
    held, so none of them can be done."""
    await asyncio.sleep(0)
    assert not any(call.done() for call in calls)


def insert(
    n: int, *, fail: bool = False
) -> tuple[Callable[[sqlite3.Connection], int], Callable[[sqlite3.Connection], int]]:
    """A write putting ``n`` in the table, as a member of a shared transaction and alone; ``fail``: it
    raises once its row is in (so nothing of it may stay)."""

    def member(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO t VALUES (?)", (n,))
        if fail:
            raise ValueError(f"write {n} failed")
        return n

    def alone(db: sqlite3.Connection) -> int:
        return immediately(db, member)

    return member, alone


def rows(path: Path) -> list[int]:
    """What another connection sees: what was committed."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [n for (n,) in db.execute("SELECT n FROM t ORDER BY n")]


async def test_writes_queued_together_share_one_commit_and_each_hears_back_after_it(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with traced(path) as subject:
        async with thread_held(subject.database):
            writes = [asyncio.ensure_future(subject.database.write(*insert(n))) for n in range(5)]
            await started(*writes)
        results = [await write for write in writes]
        seen = rows(path)  # every caller has heard back: each must see its write committed
        transactions = subject.transactions()

    assert results == [0, 1, 2, 3, 4]
    assert seen == [0, 1, 2, 3, 4]
    assert transactions == ["BEGIN IMMEDIATE", "COMMIT"], "five writes, one commit"


async def test_a_write_that_fails_among_others_fails_alone_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with traced(path) as subject:
        async with thread_held(subject.database):
            writes = [asyncio.ensure_future(subject.database.write(*insert(n, fail=n == 2))) for n in range(4)]
            await started(*writes)
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        after = await subject.database.run(lambda db: db.in_transaction)
        transactions = subject.transactions()

    assert outcomes[:2] == [0, 1]
    assert isinstance(outcomes[2], ValueError)
    assert str(outcomes[2]) == "write 2 failed"
    assert outcomes[3] == 3
    assert rows(path) == [0, 1, 3], "the failed write's row went with it"
    assert after is False, "no transaction is left open"
    assert transactions[:2] == ["BEGIN IMMEDIATE", "ROLLBACK"], "the shared transaction was rolled back first"


async def test_reads_and_writes_run_in_the_order_they_were_queued(tmp_path: Path) -> None:
    path = tmp_path / "f.db"

    def count(db: sqlite3.Connection) -> int:
        found: int = db.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        return found

    async with traced(path) as subject:
        database = subject.database
        async with thread_held(database):
            calls = [
                asyncio.ensure_future(database.write(*insert(1))),
                asyncio.ensure_future(database.run(count)),
                asyncio.ensure_future(database.write(*insert(2))),
                asyncio.ensure_future(database.write(*insert(3))),
                asyncio.ensure_future(database.run(count)),
            ]
            await started(*calls)
        outcomes = [await call for call in calls]

    assert outcomes == [1, 1, 2, 3, 3]


async def test_no_more_writes_than_the_limit_share_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with traced(path) as subject:
        async with thread_held(subject.database):
            writes = [asyncio.ensure_future(subject.database.write(*insert(n))) for n in range(GROUP_LIMIT + 5)]
            await started(*writes)
        await asyncio.gather(*writes)
        commits = subject.transactions().count("COMMIT")

    assert rows(path) == list(range(GROUP_LIMIT + 5))
    assert commits == 2


async def test_a_write_whose_caller_went_away_before_it_ran_is_not_made(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with traced(path) as subject:
        async with thread_held(subject.database):
            gone = asyncio.ensure_future(subject.database.write(*insert(1)))
            kept = asyncio.ensure_future(subject.database.write(*insert(2)))
            await started(gone, kept)
            gone.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone

    assert rows(path) == [2]


async def test_what_was_queued_runs_before_the_file_closes_and_nothing_after(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    subject = Traced(path)
    with pytest.raises(RuntimeError, match="before open"):
        await subject.database.run(lambda db: None)
    await subject.database.open()
    queued = asyncio.ensure_future(subject.database.write(*insert(7)))
    await started(queued)
    await subject.database.close()

    assert await queued == 7
    assert rows(path) == [7]
    with pytest.raises(RuntimeError, match="after close"):
        await subject.database.run(lambda db: None)


async def test_turns_committed_at_once_keep_the_trimming_and_the_caps_as_one_by_one(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    bounds, caps = Bounds(max_messages=4, image_budget=10), Caps(max_sessions=6, max_per_key=3)
    model = Model()
    try:
        for turn in range(3):
            exchange = [
                StoredMessage(role="user", content=f"q{turn}", images=["I" * 8], image_count=1, at=turn),
                StoredMessage(role="assistant", content=f"a{turn}", at=turn),
            ]
            writes = [(owner, f"c{n}", turn + n / 10) for owner in (A, B, C) for n in range(4)]
            async with thread_held(store._database):  # all twelve queued together
                appends = [
                    asyncio.ensure_future(store.append(owner, sid, exchange, bounds, caps=caps, now=now))
                    for owner, sid, now in writes
                ]
                await started(*appends)
            await asyncio.gather(*appends)
            for owner, sid, now in writes:  # in the order they were queued
                model.write(owner, sid, now, caps)
        listing = await _listing(store)
        kept = [await store.get(owner, sid) for owner, sid, _ in listing]
    finally:
        await store.close()

    assert listing == model.listing()
    for conversation in kept:
        assert conversation is not None
        assert [m.content for m in conversation.messages][-2:] == ["q2", "a2"]
        assert [m.images for m in conversation.messages][-2:] == [["I" * 8], []], "the newest image is kept"
        assert all(not m.images for m in conversation.messages[:-2]), "older images went: the budget is 10"
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        counts = db.execute("SELECT owner, held, oldest FROM session_owners ORDER BY owner").fetchall()
        truth = db.execute(
            "SELECT owner, COUNT(*), MIN(last_active) FROM sessions GROUP BY owner ORDER BY owner"
        ).fetchall()
    assert counts == truth


async def test_a_write_to_a_damaged_conversation_queued_with_others_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path)
    store = SqliteStore(path)
    await store.open()
    bounds = Bounds(max_messages=1000, image_budget=10**9)
    try:
        async with thread_held(store._database):
            appends = [
                asyncio.ensure_future(store.append("", sid, _pair(900), bounds, caps=ROOMY, now=900))
                for sid in (HEALTHY, DAMAGED, "new")
            ]
            await started(*appends)
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        healthy, new = await store.get("", HEALTHY), await store.get("", "new")
    finally:
        await store.close()

    assert outcomes[0] is None
    assert isinstance(outcomes[1], SessionDamagedError)
    assert outcomes[2] is None
    assert healthy is not None
    assert [m.content for m in healthy.messages[-2:]] == ["q900", "a900"]
    assert new is not None
    assert [m.content for m in new.messages] == ["q900", "a900"]
