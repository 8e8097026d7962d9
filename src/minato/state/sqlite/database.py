"""One ``sqlite3`` connection, and the one thread every query of it runs on.

Both users of the SQLite file reach it this way, each through a connection of its own: the store of
conversations (:mod:`minato.state.sqlite.conversations`, commits ``synchronous=FULL``) and the
workers' shared state (:mod:`minato.state.sqlite.tables`, ``synchronous=NORMAL``), so a worker
waiting for a lease never queues behind a conversation's commit. A whole unit of work (a function
of the connection: several statements, a transaction) runs on the thread in one hop, so the event
loop never waits on the disk and pays one hand-off per unit, not per statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Database:
    """A connection to the file at ``path`` on a thread of its own: ``create`` makes the file (with the
    permissions it needs) before it is connected to, ``setup`` prepares the connection."""

    def __init__(
        self,
        path: Path,
        name: str,
        create: Callable[[Path], object],
        setup: Callable[[sqlite3.Connection], None],
    ) -> None:
        self.path = path
        self._create = create
        self._setup = setup
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create the file, connect (autocommit: transactions are the work's own) and run ``setup`` on the connection;
        a failure closes it and the thread, and raises."""

        def connect() -> sqlite3.Connection:
            self._create(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                self._setup(db)
            except BaseException:
                db.close()
                raise
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Close the connection and its thread."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection's thread; its failures are raised here."""

        def call() -> T:
            db = self._db
            if db is None:
                raise RuntimeError(f"the SQLite file {self.path} used before open() or after close()")
            return work(db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def immediately(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction: it holds the file's write lock from its first
    read, so no other process changes what it read before it commits."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


__all__ = ["Database", "immediately"]
