"""A key's places across the workers of one machine: each a row of ``state_places``.

``state_places (key, token, expires_at)``, one row per generation a bounded key runs
    A place is taken in one ``BEGIN IMMEDIATE`` transaction (the key's expired rows deleted, its live
    ones counted, a row inserted when fewer than the bound), pushed a lease ahead by its renewals, and
    deleted when given back; a row whose worker died expires by itself (``MINATO_TURN_LEASE``). Times are
    the wall clock every worker of the machine shares.

The orchestration (this process's own queue first, polling, renewal, giving back) is
:class:`~minato.state.places.SharedKeyConcurrency`'; this module is the statements it runs.
"""

from __future__ import annotations

import sqlite3

from minato.state.leases import Sleep
from minato.state.places import KeyBound, PlaceStore, SharedKeyConcurrency
from minato.state.sqlite.tables import Tables


class SqlitePlaceStore:
    """The places in ``state_places``; a place is live while its ``expires_at`` is ahead of now."""

    def __init__(self, tables: Tables, lease: float) -> None:
        self._tables = tables
        self._lease = lease

    async def take(self, key: KeyBound, token: str) -> bool:
        """Take a place if fewer than ``key.limit`` are live, or ``token`` holds one already."""
        clock, lease = self._tables.clock, self._lease

        def take(db: sqlite3.Connection) -> bool:
            now = clock()
            db.execute("DELETE FROM state_places WHERE key = ? AND expires_at <= ?", (key.key, now))
            mine = db.execute("SELECT 1 FROM state_places WHERE key = ? AND token = ?", (key.key, token))
            if mine.fetchone() is not None:
                return True
            (live,) = db.execute("SELECT COUNT(*) FROM state_places WHERE key = ?", (key.key,)).fetchone()
            if live >= key.limit:
                return False
            db.execute("INSERT INTO state_places VALUES (?, ?, ?)", (key.key, token, now + lease))
            return True

        return await self._tables.write(take)

    async def extend(self, key: KeyBound, token: str) -> bool:
        """Push the place's expiry a lease ahead, if ``token``'s row is still there."""
        clock, lease = self._tables.clock, self._lease

        def extend(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE state_places SET expires_at = ? WHERE key = ? AND token = ?", (clock() + lease, key.key, token)
            )
            return cursor.rowcount == 1

        return await self._tables.write(extend)

    async def delete(self, key: KeyBound, token: str) -> None:
        """Delete ``token``'s row (never another's)."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM state_places WHERE key = ? AND token = ?", (key.key, token))

        await self._tables.write(delete)

    async def running(self, key: str) -> int:
        """How many of ``key``'s rows are live."""
        now = self._tables.clock()

        def count(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT COUNT(*) FROM state_places WHERE key = ? AND expires_at > ?", (key, now))
            return int(row.fetchone()[0])

        return await self._tables.read(count)


def sqlite_places(tables: Tables, lease: float, sleep: Sleep | None = None) -> SharedKeyConcurrency:
    """A bound per key on the generations it runs at once, across the workers sharing the file."""
    store: PlaceStore = SqlitePlaceStore(tables, lease)
    return SharedKeyConcurrency(store, lease) if sleep is None else SharedKeyConcurrency(store, lease, sleep=sleep)


__all__ = ["SqlitePlaceStore", "sqlite_places"]
