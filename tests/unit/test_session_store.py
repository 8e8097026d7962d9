"""Session stores: ownership, the store-wide image budget, the v1 → v2 migration, damaged pages."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import structlog

from minato.core.sessions import SessionManager
from minato.errors import SessionDamagedError
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.conversations import Bounds, Caps, StoredMessage
from minato.state.memory import LocalTurnLocks, MemoryStore
from minato.state.protocols import SessionStore
from minato.state.redis.home import open_redis_state
from minato.state.sqlite.conversations import SqliteStore

pytestmark = pytest.mark.anyio
#: Caps no test here reaches (the caps have tests of their own: test_session_caps.py).
ROOMY = Caps(max_sessions=10_000, max_per_key=10_000)

# The schema Minato 0.1 created (user_version 1), copied so the migration is tested against it.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    system_prompt TEXT,
    created_at REAL NOT NULL,
    last_active REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (last_active);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    images BLOB,
    image_count INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""


def _pair(n: float, images: list[str] | None = None, text: str = "") -> list[StoredMessage]:
    return [
        StoredMessage(role="user", content=f"q{n}{text}", images=images or [], image_count=len(images or []), at=n),
        StoredMessage(role="assistant", content=f"a{n}{text}", model="m", at=n),
    ]


async def _append(store: SessionStore, owner: str, session_id: str, messages: list[StoredMessage]) -> None:
    await store.append(
        owner, session_id, messages, Bounds(max_messages=1000, image_budget=10**9), caps=ROOMY, now=messages[0].at
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store implementation, opened and closed (Redis's: a real redis-server of the test's own)."""
    if request.param == "redis":
        settings = Settings(redis_url=request.getfixturevalue("redis_url"), session_store="memory://")
        async with open_redis_state(settings, Metrics()) as state:
            yield state.store
        return
    instance: SessionStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    await instance.open()
    yield instance
    await instance.close()


async def test_two_owners_each_have_their_own_conversation_with_the_same_id(store: SessionStore) -> None:
    await _append(store, "aaaaaaaaaaaa", "abc", _pair(1))
    await store.set_system_prompt("bbbbbbbbbbbb", "abc", "B's prompt", caps=ROOMY, now=2)

    mine = await store.get("aaaaaaaaaaaa", "abc")
    theirs = await store.get("bbbbbbbbbbbb", "abc")

    assert mine is not None
    assert theirs is not None
    assert (mine.owner, mine.system_prompt, len(mine.messages)) == ("aaaaaaaaaaaa", None, 2)
    assert (theirs.owner, theirs.system_prompt, len(theirs.messages)) == ("bbbbbbbbbbbb", "B's prompt", 0)
    assert await store.get("cccccccccccc", "abc") is None
    assert await store.owners_of("abc") == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert await store.owners_of("nobody") == []


async def test_deleting_one_owners_conversation_leaves_the_others(store: SessionStore) -> None:
    await _append(store, "aaaaaaaaaaaa", "abc", _pair(1))
    await _append(store, "bbbbbbbbbbbb", "abc", _pair(2))

    await store.delete("cccccccccccc", "abc")
    await store.delete("aaaaaaaaaaaa", "abc")

    assert await store.get("aaaaaaaaaaaa", "abc") is None
    assert await store.get("bbbbbbbbbbbb", "abc") is not None


async def test_a_listing_is_one_owners_or_with_none_everyones_with_owners(store: SessionStore) -> None:
    await _append(store, "aaaaaaaaaaaa", "one", _pair(1))
    await _append(store, "bbbbbbbbbbbb", "two", _pair(2))
    await _append(store, "aaaaaaaaaaaa", "three", _pair(3))

    own, own_total = await store.list("aaaaaaaaaaaa", 0, 10)
    every, every_total = await store.list(None, 0, 10)

    assert [(s.owner, s.id) for s in own] == [("aaaaaaaaaaaa", "three"), ("aaaaaaaaaaaa", "one")]
    assert own_total == 2
    assert [(s.owner, s.id, s.message_count) for s in every] == [
        ("aaaaaaaaaaaa", "three", 2),
        ("bbbbbbbbbbbb", "two", 2),
        ("aaaaaaaaaaaa", "one", 2),
    ]
    assert every_total == 3
    assert await store.list("cccccccccccc", 0, 10) == ([], 0)


async def test_the_image_budget_drops_the_oldest_images_of_the_whole_store_first(store: SessionStore) -> None:
    await _append(store, "aaaaaaaaaaaa", "old", _pair(1, ["A" * 40]))
    await _append(store, "bbbbbbbbbbbb", "middle", _pair(2, ["B" * 40]))
    await _append(store, "aaaaaaaaaaaa", "new", _pair(3, ["C" * 40]))
    await _append(store, "aaaaaaaaaaaa", "old", _pair(4))  # activity does not make old images younger

    assert await store.enforce_image_budget(120) == 0
    stripped = await store.enforce_image_budget(79)

    assert stripped == 2
    old = await store.get("aaaaaaaaaaaa", "old")
    middle = await store.get("bbbbbbbbbbbb", "middle")
    new = await store.get("aaaaaaaaaaaa", "new")
    assert old is not None
    assert middle is not None
    assert new is not None
    assert (old.messages[0].images, old.messages[0].image_count, old.messages[0].content) == ([], 1, "q1")
    assert (middle.messages[0].images, middle.messages[0].image_count) == ([], 1)
    assert new.messages[0].images == ["C" * 40]
    assert await store.enforce_image_budget(40) == 0, "what is left fits"


async def test_a_zero_image_budget_keeps_no_image_and_every_text(store: SessionStore) -> None:
    await _append(store, "", "s", _pair(1, ["A" * 10, "B" * 10]))

    assert await store.enforce_image_budget(0) == 1

    session = await store.get("", "s")
    assert session is not None
    assert [(m.content, m.images, m.image_count) for m in session.messages] == [("q1", [], 2), ("a1", [], 0)]


async def test_deleted_and_expired_conversations_no_longer_count_against_the_image_budget(
    store: SessionStore,
) -> None:
    await _append(store, "", "gone", _pair(1, ["A" * 50]))
    await _append(store, "", "expired", _pair(2, ["B" * 50]))
    await _append(store, "", "kept", _pair(30, ["C" * 50]))

    await store.delete("", "gone")
    await store.expire(idle_before=10, caps=Caps(max_sessions=100, max_per_key=100))

    assert await store.enforce_image_budget(50) == 0
    kept = await store.get("", "kept")
    assert kept is not None
    assert kept.messages[0].images == ["C" * 50]


async def test_a_turn_with_images_keeps_the_store_within_its_image_budget() -> None:
    store = MemoryStore()
    manager = SessionManager(store, LocalTurnLocks(), Settings(session_store="memory://", store_image_bytes=100))
    await manager.start()
    try:
        for n, session_id in enumerate(["first", "second", "third"]):
            turn = await manager.begin("", session_id)
            await turn.commit("m", f"q{n}", ["X" * 40], "a")
            turn.release()

        sessions = [await store.get("", s) for s in ("first", "second", "third")]
    finally:
        await manager.stop()

    assert [s.messages[0].images if s else None for s in sessions] == [[], ["X" * 40], ["X" * 40]]


# -- SQLite: migration ----------------------------------------------------------------------------


def _v1_database(path: Path, since: float = 0.0) -> None:
    """A v1 store with two conversations; its times are seconds after ``since``."""
    images = msgspec.json.encode(["aGk=", "Ym9uam91cg=="])
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    db.execute("PRAGMA user_version=1")
    with db:
        db.executemany(
            "INSERT INTO sessions VALUES (?, ?, ?, ?)",
            [("alice", "Be brief.", since + 10, since + 20), ("bob", None, since + 11, since + 30)],
        )
        db.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("alice", 1, "user", "What is it?", images, 2, None, since + 12.0),
                ("alice", 2, "assistant", "A cat.", None, 0, "llava", since + 12.5),
                ("alice", 3, "user", "Colour?", None, 1, None, since + 19.0),  # its image was dropped already
                ("alice", 4, "assistant", "Grey.", None, 0, "llava", since + 20.0),
                ("bob", 1, "user", "Hi", None, 0, None, since + 30.0),
                ("bob", 2, "assistant", "Hello", None, 0, "llama3.2", since + 30.0),
            ],
        )
    db.close()


async def test_a_v1_store_migrates_with_every_conversation_message_image_and_prompt(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_database(path)
    store = SqliteStore(path)

    with structlog.testing.capture_logs() as logs:
        await store.open()
    try:
        alice = await store.get("", "alice")
        bob = await store.get("", "bob")
        listing = await store.list(None, 0, 10)
        over_budget = await store.enforce_image_budget(4)
    finally:
        await store.close()

    assert alice is not None
    assert bob is not None
    assert (alice.system_prompt, alice.created_at, alice.last_active) == ("Be brief.", 10, 20)
    assert [(m.role, m.content, m.images, m.image_count, m.model, m.at) for m in alice.messages] == [
        ("user", "What is it?", ["aGk=", "Ym9uam91cg=="], 2, None, 12.0),
        ("assistant", "A cat.", [], 0, "llava", 12.5),
        ("user", "Colour?", [], 1, None, 19.0),
        ("assistant", "Grey.", [], 0, "llava", 20.0),
    ]
    assert [m.content for m in bob.messages] == ["Hi", "Hello"]
    assert [(s.owner, s.id, s.message_count) for s in listing[0]] == [("", "bob", 2), ("", "alice", 4)]
    assert over_budget == 1, "the migrated images count against the store's image budget (16 bytes)"
    assert any(e["event"] == "session_store_migrated" for e in logs)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 3
    assert {name for (name,) in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "sessions",
        "messages",
        "session_owners",
        "sqlite_sequence",
    }
    assert check.execute("SELECT owner, held, oldest FROM session_owners").fetchall() == [("", 2, 20)]
    check.close()


async def test_a_migrated_store_opens_again_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_database(path)
    for _ in range(2):
        store = SqliteStore(path)
        await store.open()
        alice = await store.get("", "alice")
        await store.close()
        assert alice is not None
        assert len(alice.messages) == 4


async def test_a_store_from_a_newer_minato_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=4")
    db.close()

    with pytest.raises(RuntimeError, match="schema v4"):
        await SqliteStore(path).open()


async def test_a_conversation_created_again_gets_a_new_sid(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    await store.open()
    await _append(store, "", "s", _pair(1))
    await _append(store, "", "s", _pair(2))
    await store.delete("", "s")
    await _append(store, "", "s", _pair(3))
    await store.close()

    db = sqlite3.connect(path)
    assert db.execute("SELECT sid FROM sessions").fetchall() == [(2,)], "sids are never reused (nor wasted)"
    db.close()


# -- SQLite: damaged pages ------------------------------------------------------------------------

DAMAGED, HEALTHY = "damaged", "healthy"


async def _store_with_a_damaged_conversation(path: Path, images: bool = False, owner: str = "") -> None:
    """Two conversations on pages of their own; then one page of the first one's messages is
    overwritten, as a failing disk would."""
    store = SqliteStore(path)
    await store.open()
    recently = int(time.time()) - 1000  # recent enough not to expire
    for session_id, base in ((DAMAGED, recently), (HEALTHY, recently + 100)):
        for n in range(20):
            pair = _pair(base + n, ["QUJD" * 10] if images else [], text=f"-{session_id.upper()}-{n}-" + "x" * 700)
            await _append(store, owner, session_id, pair)
    await store.close()
    _overwrite_page_holding(path, b"-DAMAGED-10-")


def _overwrite_page_holding(path: Path, marker: bytes) -> None:
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")  # the database header's page size
    page = data.index(marker) // page_size
    data[page * page_size : (page + 1) * page_size] = b"\xa5" * page_size
    path.write_bytes(data)


async def test_damage_is_reported_at_open_naming_the_conversations_it_hit(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path)
    store = SqliteStore(path)

    with structlog.testing.capture_logs() as logs:
        await store.open()
    await store.close()

    [report] = [e for e in logs if e["event"] == "session_store_damaged"]
    assert report["damaged_sessions"] == [DAMAGED]
    assert report["damaged_session_count"] == 1
    assert report["problems"]


async def test_a_healthy_store_reports_no_damage(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    with structlog.testing.capture_logs() as logs:
        await store.open()
    await store.close()

    assert [e["event"] for e in logs] == ["session_store_checked"]
    assert logs[0]["log_level"] == "info"


async def test_a_damaged_conversation_is_a_clear_error_and_can_still_be_deleted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path)
    store = SqliteStore(path)
    await store.open()
    try:
        with pytest.raises(SessionDamagedError, match=f"'{DAMAGED}'.*DELETE /chat/{DAMAGED}"):
            await store.get("", DAMAGED)
        healthy = await store.get("", HEALTHY)
        listing, total = await store.list(None, 0, 10)

        with structlog.testing.capture_logs() as logs:
            await store.delete("", DAMAGED)
        gone = await store.get("", DAMAGED)
        await _append(store, "", DAMAGED, _pair(500))
        fresh = await store.get("", DAMAGED)
    finally:
        await store.close()

    assert healthy is not None
    assert len(healthy.messages) == 40
    assert (total, {s.id for s in listing}) == (2, {DAMAGED, HEALTHY})
    assert [e["event"] for e in logs] == ["session_messages_left_damaged"]
    assert gone is None
    assert fresh is not None
    assert [m.content for m in fresh.messages] == ["q500", "a500"]


async def test_the_damage_error_of_a_keys_conversation_says_how_to_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path, owner="aaaaaaaaaaaa")
    store = SqliteStore(path)
    await store.open()
    try:
        with pytest.raises(SessionDamagedError, match=rf"DELETE /chat/{DAMAGED}\?owner=aaaaaaaaaaaa removes it"):
            await store.get("aaaaaaaaaaaa", DAMAGED)
    finally:
        await store.close()


async def test_expiry_and_the_image_budget_get_past_damaged_pages(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await _store_with_a_damaged_conversation(path, images=True)
    store = SqliteStore(path)
    await store.open()
    try:
        with structlog.testing.capture_logs() as logs:
            stripped = await store.enforce_image_budget(0)
        healthy = await store.get("", HEALTHY)
        expired = await store.expire(idle_before=time.time(), caps=Caps(max_sessions=100, max_per_key=100))
        listing = await store.list(None, 0, 10)
    finally:
        await store.close()

    assert 20 <= stripped < 40, "the images on healthy pages were dropped, the damaged ones skipped"
    assert healthy is not None
    assert all(not m.images for m in healthy.messages)
    assert any(e["event"] == "session_image_on_damaged_page" for e in logs)
    assert expired == 2
    assert listing == ([], 0)
