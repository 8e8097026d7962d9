"""A conversation's turn across the workers of one machine: its lease is a row of ``state_leases``.

The orchestration (the process's own lock first, polling, renewal, giving back) is
:class:`~minato.state.leases.Leases`'; this module is the three statements it runs.
"""

from __future__ import annotations

import sqlite3

from minato.state.leases import Leases, LeaseStore, Sleep
from minato.state.sqlite.tables import Tables


class SqliteLeaseStore:
    """The leases in ``state_leases``, each a row ``(owner, session_id, token, expires_at)``."""

    def __init__(self, tables: Tables, lease: float) -> None:
        self._tables = tables
        self._lease = lease

    async def take(self, key: tuple[str, str], token: str) -> bool:
        """Take the lease if it has no row, or an expired one."""
        clock, lease = self._tables.clock, self._lease

        def take(db: sqlite3.Connection) -> bool:
            now = clock()
            row = db.execute("SELECT token, expires_at FROM state_leases WHERE owner = ? AND session_id = ?", key)
            found = row.fetchone()
            if found is not None and found[1] > now:
                return bool(found[0] == token)
            db.execute("INSERT OR REPLACE INTO state_leases VALUES (?, ?, ?, ?)", (*key, token, now + lease))
            return True

        return await self._tables.write(take)

    async def extend(self, key: tuple[str, str], token: str) -> bool:
        """Push the row's expiry a lease ahead, if the row is still ``token``'s."""
        clock, lease = self._tables.clock, self._lease

        def extend(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE state_leases SET expires_at = ? WHERE owner = ? AND session_id = ? AND token = ?",
                (clock() + lease, *key, token),
            )
            return cursor.rowcount == 1

        return await self._tables.write(extend)

    async def delete(self, key: tuple[str, str], token: str) -> None:
        """Delete the row if it is still ``token``'s."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM state_leases WHERE owner = ? AND session_id = ? AND token = ?", (*key, token))

        await self._tables.write(delete)


def sqlite_turns(tables: Tables, lease: float, sleep: Sleep | None = None) -> Leases:
    """One turn at a time per conversation, across the workers sharing the file."""
    store: LeaseStore[tuple[str, str]] = SqliteLeaseStore(tables, lease)
    return Leases(store, lease) if sleep is None else Leases(store, lease, sleep=sleep)


__all__ = ["SqliteLeaseStore", "sqlite_turns"]
