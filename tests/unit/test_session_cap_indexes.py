"""The indexes behind the caps: SQLite's owners' counts (kept by triggers, migrated from v2) and Redis's
holders; and making room past damaged pages."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis

from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.conversations import Caps
from minato.state.homes import open_state
from minato.state.sqlite import conversations as sqlite_store
from minato.state.sqlite.conversations import SqliteStore
from tests.unit.test_session_caps import ROOMY, WIDE, A, B, C, _listing, _pair
from tests.unit.test_session_store import DAMAGED, HEALTHY, _store_with_a_damaged_conversation

pytestmark = pytest.mark.anyio

# -- SQLite: the owners' counts ------------------------------------------------------------------------

# The schema Minato created before the caps (user_version 2), copied so the migration is tested against it.
SCHEMA_V2 = """
CREATE TABLE sessions (
    sid INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, id TEXT NOT NULL, system_prompt TEXT,
    created_at REAL NOT NULL, last_active REAL NOT NULL, message_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (owner, id)
);
CREATE INDEX sessions_by_activity ON sessions (last_active);
CREATE INDEX sessions_by_owner ON sessions (owner, last_active);
CREATE INDEX sessions_by_id ON sessions (id);
CREATE TABLE messages (
    sid INTEGER NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, image_bytes INTEGER NOT NULL DEFAULT 0,
    image_count INTEGER NOT NULL DEFAULT 0, model TEXT, at REAL NOT NULL, content TEXT NOT NULL, images BLOB,
    PRIMARY KEY (sid, seq)
) WITHOUT ROWID;
CREATE INDEX messages_with_images ON messages (at, image_bytes) WHERE image_bytes > 0;
PRAGMA user_version = 2;
"""


async def test_a_v2_store_gets_the_owners_counts_and_its_conversations_obey_the_caps(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA_V2)
        with db:
            db.executemany(
                "INSERT INTO sessions (owner, id, created_at, last_active) VALUES (?, ?, ?, ?)",
                [(A, "a-1", 1, 1), (A, "a-2", 2, 2), (A, "a-3", 3, 3), ("", "k-1", 4, 4), (B, "b-1", 5, 5)],
            )
    store = SqliteStore(path)
    with structlog.testing.capture_logs() as logs:
        await store.open()
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            counts = db.execute("SELECT owner, held, oldest FROM session_owners ORDER BY owner").fetchall()
            indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        await store.append(A, "a-4", _pair(6), WIDE, caps=Caps(max_sessions=5, max_per_key=3), now=6)
        after = await _listing(store)
    finally:
        await store.close()

    assert counts == [("", 1, 4), (A, 3, 1), (B, 1, 5)]
    assert "sessions_by_owner" not in indexes
    assert {"sessions_by_owner_activity", "session_owners_by_size"} <= indexes
    assert [e["from_version"] for e in logs if e["event"] == "session_store_migrated"] == [2]
    assert after == [(A, "a-4", 6), (B, "b-1", 5), ("", "k-1", 4), (A, "a-3", 3), (A, "a-2", 2)]


async def test_making_room_in_sqlite_is_index_probes_not_scans(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.close()

    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        plans = {
            sql: [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
            for sql, args in [
                (sqlite_store._LEAST_RECENT_OF, (A, 0, 1)),
                (sqlite_store._HELD_BY, (A,)),
                (sqlite_store._OVER_THE_KEY_CAP, (3,)),
                (sqlite_store._BIGGEST_HOLDERS, ()),
                ("SELECT MIN(last_active) FROM sessions WHERE owner = ?", (A,)),  # the triggers' one query
            ]
        }

    for sql, plan in plans.items():
        assert all("INDEX" in step or "PRIMARY KEY" in step for step in plan), (sql, plan)
        assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)


async def test_the_owners_counts_stay_true_to_the_conversations(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        for n in range(30):
            owner = [A, B, ""][n % 3]
            await store.append(owner, f"s-{n % 7}", _pair(n), WIDE, caps=Caps(max_sessions=9, max_per_key=2), now=n)
        await store.delete(B, "s-1")
        await store.expire(12, Caps(max_sessions=4, max_per_key=1))
    finally:
        await store.close()

    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        kept = db.execute("SELECT owner, held, oldest FROM session_owners ORDER BY owner").fetchall()
        truth = db.execute(
            "SELECT owner, COUNT(*), MIN(last_active) FROM sessions GROUP BY owner ORDER BY owner"
        ).fetchall()
    assert kept == truth
    assert kept, "something was left to count"


# -- Redis: conversations kept by a Minato from before the caps ---------------------------------------------


async def test_the_first_sweep_indexes_the_owners_of_conversations_from_before(redis_url: str) -> None:
    settings = Settings(session_store="memory://", redis_url=redis_url)
    async with open_state(settings, Metrics()) as state:
        for n, (owner, session_id) in enumerate([(B, "b-1"), (A, "a-1"), (A, "a-2"), (A, "a-3"), (C, "c-1")]):
            await state.store.append(owner, session_id, _pair(n), WIDE, caps=ROOMY, now=1000 + n)
        raw = Redis.from_url(redis_url)
        await raw.delete("minato:holders", "minato:holding", "minato:holders:built")  # as an older Minato left it
        dropped = await state.store.expire(0, Caps(max_sessions=3, max_per_key=10))
        after = await _listing(state.store)
        built = await raw.zrange("minato:holders", 0, -1, withscores=True)
        await raw.aclose()

    assert dropped == 2
    assert after == [(C, "c-1", 1004), (A, "a-3", 1003), (B, "b-1", 1000)], "A held the most, not B the oldest"
    assert built == [
        (b"0000000001000.000000 " + B.encode(), -1.0),
        (b"0000000001003.000000 " + A.encode(), -1.0),
        (b"0000000001004.000000 " + C.encode(), -1.0),
    ]


async def test_making_room_gets_past_the_damaged_pages_of_the_conversation_it_evicts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path)  # DAMAGED is the least recently active
    store = SqliteStore(path)
    await store.open()
    try:
        with structlog.testing.capture_logs() as logs:
            await store.append(
                "", "new", _pair(time.time()), WIDE, caps=Caps(max_sessions=2, max_per_key=1), now=time.time()
            )
        listing = [(owner, session_id) for owner, session_id, _ in await _listing(store)]
        new = await store.get("", "new")
    finally:
        await store.close()

    assert listing == [("", "new"), ("", HEALTHY)]
    assert new is not None
    assert [m.role for m in new.messages] == ["user", "assistant"], "the write that made room was recorded"
    assert [e["session"] for e in logs if e["event"] == "session_messages_left_damaged"] == [DAMAGED]
