"""Who may read the conversation store: the files and directories Minato makes are its user's alone, and a
store others can read is reported at start-up (and left as the operator made it)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.conversations import Bounds, Caps, StoredMessage
from minato.state.homes import open_state
from minato.state.sqlite.conversations import SqliteStore
from minato.state.sqlite.home import SqliteState

pytestmark = pytest.mark.anyio

WIDE = Bounds(max_messages=100, image_budget=10**6)
ROOMY = Caps(max_sessions=100, max_per_key=100)
MESSAGES = [StoredMessage(role="user", content="secret", at=1), StoredMessage(role="assistant", content="ok", at=1)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(path: Path) -> list[Path]:
    """The store and the two files SQLite keeps beside it in WAL mode."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask while the test runs: the usual one, and one that takes no bit away."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


async def test_a_new_store_its_wal_and_shm_and_the_directories_minato_makes_are_private(
    tmp_path: Path, umask: int
) -> None:
    path = tmp_path / "made" / "by" / "minato" / "s.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.append("k", "s", MESSAGES, WIDE, caps=ROOMY, now=1)
        files = {f.name: _mode(f) for f in _files(path)}  # while open, so the -wal and -shm exist
    finally:
        await store.close()

    assert files == {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}
    assert [_mode(d) for d in (tmp_path / "made", path.parent.parent, path.parent)] == [0o700] * 3


async def test_the_workers_shared_state_in_the_same_file_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "s.db"
    settings = Settings(session_store=str(path), workers=2)
    async with open_state(settings, Metrics()) as state:
        await state.store.append("k", "s", MESSAGES, WIDE, caps=ROOMY, now=1)
        (await state.turns.acquire("k", "s")).release()
        modes = [_mode(f) for f in _files(path)]

    assert modes == [0o600] * 3
    assert _mode(path.parent) == 0o700


async def test_the_workers_state_opened_before_the_store_makes_the_file_private_too(tmp_path: Path) -> None:
    path = tmp_path / "first" / "s.db"
    state = SqliteState(path, Settings(session_store=str(path), workers=2))
    await state.open()
    try:
        (await state.turns.acquire("k", "s")).release()
        modes = [_mode(f) for f in _files(path)]
    finally:
        await state.close()

    assert modes == [0o600] * 3
    assert _mode(path.parent) == 0o700


async def test_a_store_others_can_read_is_reported_at_start_up_and_left_as_the_operator_made_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    earlier = sqlite3.connect(path)  # an older Minato's store, still open: its -wal and -shm exist
    earlier.execute("PRAGMA journal_mode=WAL")
    earlier.execute("CREATE TABLE t (x)")
    earlier.execute("INSERT INTO t VALUES (1)")
    earlier.commit()
    for file, mode in zip(_files(path), (0o644, 0o640, 0o606), strict=True):
        file.chmod(mode)
    store = SqliteStore(path)
    try:
        with structlog.testing.capture_logs() as logs:
            await store.open()
        await store.append("k", "s", MESSAGES, WIDE, caps=ROOMY, now=1)
        kept = await store.get("k", "s")
    finally:
        await store.close()
        earlier.close()

    warnings = [e for e in logs if e["event"] == "session_store_not_private"]
    assert [(e["log_level"], e["path"], e["mode"], e["fix"]) for e in warnings] == [
        ("warning", str(file), mode, f"chmod 600 {file}")
        for file, mode in zip(_files(path), ("0644", "0640", "0606"), strict=True)
    ]
    assert kept is not None, "Minato still starts, and works"
    assert _mode(path) == 0o644, "the operator's file keeps its mode"


async def test_a_private_store_in_the_operators_directory_opens_without_a_warning(tmp_path: Path) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    path = directory / "s.db"
    first = SqliteStore(path)
    await first.open()
    await first.close()
    again = SqliteStore(path)
    with structlog.testing.capture_logs() as logs:
        await again.open()
    await again.close()

    assert [e for e in logs if e["log_level"] == "warning"] == []
    assert _mode(path) == 0o600
    assert _mode(directory) == 0o755, "a directory Minato did not make keeps its mode"
