"""The limits the workers of one machine share, and what they need besides: a key's token bucket and
its quota minutes, session-to-backend affinity, and whether the file answers. Rows of the state's
tables (:mod:`minato.state.sqlite.tables`), each read and written back in one transaction so workers
never both take the last request; the arithmetic is :mod:`minato.state.windows`', as in every home.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Final

from minato.errors import StateUnavailableError
from minato.state.windows import Bucket, Standing, bucket, minute_of, oldest_live, peek, standing, take_one

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.state.sqlite.tables import Tables

#: Seconds between sweeps of expired affinity entries (by whichever worker puts one).
AFFINITY_SWEEP_SECONDS: Final = 60.0


class SqliteRateLimiter:
    """A token bucket per key (:func:`~minato.state.windows.take_one`), one row each."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def check(self, key: str, per_minute: int) -> Bucket:
        """Take one request from ``key``'s bucket: where it stands then."""
        clock = self._tables.clock

        def take(db: sqlite3.Connection) -> Bucket:
            now = clock()
            tokens, last = _row(db, key, per_minute, now)
            tokens, wait = take_one(tokens, last, now, per_minute)
            # Rows are only made for keys with a rate (configured keys): a bounded table.
            db.execute("INSERT OR REPLACE INTO state_buckets VALUES (?, ?, ?)", (key, tokens, now))
            return bucket(tokens, wait, per_minute)

        return await self._tables.write(take)

    async def peek(self, key: str, per_minute: int) -> Bucket:
        """Where ``key``'s bucket stands, nothing taken."""
        clock = self._tables.clock

        def look(db: sqlite3.Connection) -> Bucket:
            now = clock()
            return peek(*_row(db, key, per_minute, now), now, per_minute)

        return await self._tables.read(look)


def _row(db: sqlite3.Connection, key: str, per_minute: int, now: float) -> tuple[float, float]:
    """A key's bucket: what it held, and when; a key not seen yet is full."""
    row = db.execute("SELECT tokens, last FROM state_buckets WHERE key = ?", (key,)).fetchone()
    return (float(row[0]), float(row[1])) if row is not None else (float(per_minute), now)


class SqliteQuota:
    """A key's tokens over a rolling 24 h (:mod:`minato.state.windows`): a row per key and minute."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def check(self, caller: Caller) -> Standing:
        """Where the key stands against its quota."""
        limit = caller.tokens_per_day
        if not limit:
            return Standing(0.0, 0)
        clock = self._tables.clock

        def count(db: sqlite3.Connection) -> Standing:
            now = clock()
            buckets = db.execute(
                "SELECT minute, tokens FROM state_quota WHERE key = ? AND minute >= ? ORDER BY minute",
                (caller.fingerprint, oldest_live(minute_of(now))),
            ).fetchall()
            return standing(buckets, sum(tokens for _, tokens in buckets), limit, now)

        return await self._tables.read(count)

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` for a key with a quota, and forget its minutes out of the window."""
        if not caller.tokens_per_day or tokens <= 0:
            return
        clock = self._tables.clock

        def add(db: sqlite3.Connection) -> None:
            minute = minute_of(clock())
            db.execute(
                "INSERT INTO state_quota VALUES (?, ?, ?) "
                "ON CONFLICT (key, minute) DO UPDATE SET tokens = tokens + excluded.tokens",
                (caller.fingerprint, minute, tokens),
            )
            db.execute(
                "DELETE FROM state_quota WHERE key = ? AND minute < ?", (caller.fingerprint, oldest_live(minute))
            )

        await self._tables.write(add)


class SqliteAffinity:
    """Conversation → backend, one row each, forgotten ``ttl`` seconds after it was last put; at most
    ``max_entries`` rows are kept past a sweep (the least recently put go first)."""

    def __init__(self, tables: Tables, max_entries: int, ttl: float) -> None:
        self._tables = tables
        self._max_entries = max_entries
        self._ttl = ttl
        self._swept = 0.0

    async def get(self, key: str) -> str | None:
        """The backend ``key`` last used, unless that was longer than ``ttl`` ago."""
        now = self._tables.clock()

        def find(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT backend FROM state_affinity WHERE key = ? AND expires_at > ?", (key, now))
            found = row.fetchone()
            return None if found is None else str(found[0])

        return await self._tables.read(find)

    async def put(self, key: str, backend: str) -> None:
        """Remember ``backend`` for ``key``; now and then forget the expired and the excess."""
        now = self._tables.clock()
        sweep = now - self._swept >= AFFINITY_SWEEP_SECONDS
        if sweep:
            self._swept = now

        def remember(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO state_affinity VALUES (?, ?, ?)", (key, backend, now + self._ttl))
            if sweep:
                db.execute("DELETE FROM state_affinity WHERE expires_at <= ?", (now,))
                db.execute(
                    "DELETE FROM state_affinity WHERE key IN "
                    "(SELECT key FROM state_affinity ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
                    (self._max_entries,),
                )

        await self._tables.write(remember)


class SqliteHealth:
    """Whether the state's connection to the file answers."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    @property
    def name(self) -> str:
        """``sqlite``."""
        return "sqlite"

    async def ping(self) -> str | None:
        """``None`` when a query of the state's tables answers, else why not."""
        try:
            await self._tables.read(lambda db: db.execute("SELECT COUNT(*) FROM state_leases").fetchone())
        except StateUnavailableError as exc:
            return exc.detail
        return None


__all__ = ["SqliteAffinity", "SqliteHealth", "SqliteQuota", "SqliteRateLimiter"]
