"""What each key used, in the SQLite file of the conversations: a row per minute, key and model.

The ledger is kept in the store's file whether one worker serves or several, so it survives a restart
and every worker of the machine reports the same. It has a connection of its own to the file (its
writes never queue behind a lease or a conversation's commit) and makes its own table, ``state_usage``,
the first time it opens the file. Rows out of the window are swept once a minute by whichever worker
writes; a read only sums the live ones.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from minato.state.sqlite.tables import BUSY_TIMEOUT_SECONDS, Tables
from minato.state.usage import Batch, Tally, Totals, WriteBehind, add_to
from minato.state.windows import minute_of, oldest_live

# The minute first, so a sweep of old rows is a range of the primary key.
_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS state_usage (minute INTEGER NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL, "
    "requests INTEGER NOT NULL, prompt INTEGER NOT NULL, completion INTEGER NOT NULL, "
    "PRIMARY KEY (minute, key, model)) WITHOUT ROWID"
)
_ADD: Final = (
    "INSERT INTO state_usage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (minute, key, model) DO UPDATE SET "
    "requests = requests + excluded.requests, prompt = prompt + excluded.prompt, "
    "completion = completion + excluded.completion"
)
_READ: Final = (
    "SELECT key, model, SUM(requests), SUM(prompt), SUM(completion) FROM state_usage WHERE minute >= ? "
    "GROUP BY key, model"
)


class SqliteUsage:
    """The usage sink of the SQLite file (see :class:`~minato.state.usage.UsageSink`)."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._swept = -1

    async def open(self) -> None:
        """Make the table if the file has none yet."""
        await self._tables.write(lambda db: db.execute(_TABLE))

    async def add(self, batch: Batch) -> None:
        """Count ``batch`` in the current minute; once a minute, forget the minutes out of the window."""
        minute = minute_of(self._tables.clock())
        sweep = minute != self._swept
        rows = [(minute, key, model, *tally) for (key, model), tally in batch.items()]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(_ADD, rows)
            if sweep:
                db.execute("DELETE FROM state_usage WHERE minute < ?", (oldest_live(minute),))

        await self._tables.write(write)
        self._swept = minute

    async def totals(self, keys: Collection[str]) -> Totals:
        """``keys``' tallies over the window."""
        first = oldest_live(minute_of(self._tables.clock()))
        wanted = frozenset(keys)

        def read(db: sqlite3.Connection) -> Totals:
            found: Totals = {}
            # Grouped over every key (a row per key and model: the configured keys), then kept if asked for.
            for key, model, requests, prompt, completion in db.execute(_READ, (first,)):
                if key in wanted:
                    add_to(found, key, model, Tally(requests, prompt, completion))
            return found

        return await self._tables.read(read)


@asynccontextmanager
async def open_sqlite_usage(
    path: Path,
    *,
    failed: Callable[[], object] | None = None,
    clock: Callable[[], float] = time.time,
    busy_timeout: float = BUSY_TIMEOUT_SECONDS,
) -> AsyncIterator[WriteBehind]:
    """The usage ledger in the SQLite file at ``path``, for as long as the block lasts (what is counted
    and not written yet is written when it ends). ``failed`` is told of each write that failed."""
    tables = Tables(path, busy_timeout, clock)
    await tables.open()
    try:
        sink = SqliteUsage(tables)
        await sink.open()
        ledger = WriteBehind(sink, failed=failed)
        try:
            yield ledger
        finally:
            await ledger.close()
    finally:
        await tables.close()


__all__ = ["SqliteUsage", "open_sqlite_usage"]
