"""The tables the workers of one machine share in the SQLite file, and the connection that reaches them.

The conversations' file (``MINATO_SESSION_STORE``) also holds a conversation's turn lease, each
key's places (:mod:`minato.state.sqlite.places`), token bucket and quota minutes, and session-to-backend
affinity, in tables of their own
(``state_*``: the conversations' schema and its migrations never see them). They are reached through
a connection of their own (:class:`~minato.state.sqlite.database.Database`). Commits are
``synchronous=NORMAL``: a lease or a counter need not survive a power cut (a lease expires anyway);
``busy_timeout`` makes the workers wait for each other.

Every failure of SQLite (the file locked beyond the busy timeout, a full or failing disk) is a
:class:`~minato.errors.StateUnavailableError`: the request is refused, never let past its limits.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import structlog

from minato.errors import StateUnavailableError
from minato.state.sqlite.database import Database, immediately
from minato.state.sqlite.files import create_private

T = TypeVar("T")
logger = structlog.get_logger("minato.state")

#: Seconds a worker waits for another one's write before the request is refused.
BUSY_TIMEOUT_SECONDS: Final = 5.0
UNAVAILABLE: Final = "the shared state in the embedded store cannot answer; try again shortly"

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS state_leases (owner TEXT NOT NULL, session_id TEXT NOT NULL, "
    "token TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (owner, session_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_places (key TEXT NOT NULL, token TEXT NOT NULL, "
    "expires_at REAL NOT NULL, PRIMARY KEY (key, token)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "last REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_quota (key TEXT NOT NULL, minute INTEGER NOT NULL, "
    "tokens INTEGER NOT NULL, PRIMARY KEY (key, minute)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_affinity (key TEXT PRIMARY KEY, backend TEXT NOT NULL, "
    "expires_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS state_affinity_by_expiry ON state_affinity (expires_at)",
)


class Tables:
    """The state's connection to the file; ``clock`` is the time every row's times are in."""

    def __init__(self, path: Path, busy_timeout: float, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        setup = functools.partial(_prepare, busy_timeout=busy_timeout, now=clock)
        self._database = Database(path, "minato-state", create_private, setup)

    async def open(self) -> None:
        """Connect, and create the state's tables if they are missing; drop leases and places expired."""
        try:
            await self._database.open()
        except sqlite3.Error as exc:
            raise StateUnavailableError(UNAVAILABLE) from _logged(exc, self.path)

    async def close(self) -> None:
        """Close the connection and its thread."""
        await self._database.close()

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` (one statement, or reads that need not agree) on the state's thread."""
        try:
            return await self._database.run(work)
        except sqlite3.Error as exc:
            raise StateUnavailableError(UNAVAILABLE) from _logged(exc, self.path)

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction (see
        :func:`~minato.state.sqlite.database.immediately`)."""
        return await self.read(functools.partial(immediately, work=work))


def _prepare(db: sqlite3.Connection, *, busy_timeout: float, now: Callable[[], float]) -> None:
    db.execute(f"PRAGMA busy_timeout={round(busy_timeout * 1000)}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")

    def create(db: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("DELETE FROM state_leases WHERE expires_at < ?", (now(),))
        db.execute("DELETE FROM state_places WHERE expires_at <= ?", (now(),))

    immediately(db, create)


def _logged(exc: sqlite3.Error, path: Path) -> sqlite3.Error:
    logger.warning("shared_state_unavailable", store="sqlite", path=str(path), error=str(exc))
    return exc


__all__ = ["BUSY_TIMEOUT_SECONDS", "UNAVAILABLE", "Tables"]
