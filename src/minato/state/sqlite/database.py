"""One ``sqlite3`` connection, and the one thread every query of it runs on.

Both users of the SQLite file reach it this way, each through a connection of its own: the store of
conversations (:mod:`minato.state.sqlite.conversations`, commits ``synchronous=FULL``) and the
workers' shared state (:mod:`minato.state.sqlite.tables`, ``synchronous=NORMAL``), so a worker
waiting for a lease never queues behind a conversation's commit. A whole unit of work (a function
of the connection: several statements, a transaction) runs on the thread in one hop, so the event
loop never waits on the disk and pays one hand-off per unit, not per statement.

The hand-off is a queue the thread drains and a future the event loop is woken for
(``call_soon_threadsafe``): a fraction of what :meth:`asyncio.loop.run_in_executor` costs per call,
and each unit that arrives while the thread is busy is picked up without waking it again.

Writes may share a commit (:meth:`Database.write`): those queued together run in one transaction, so a
``synchronous=FULL`` store pays one sync of its log for all of them, and each caller hears of its own
write only once that commit is on the disk, as it would alone. If any of them fails, the whole
transaction is rolled back and each runs again alone, so one write's failure is never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

#: Writes sharing one transaction at most: a bound on how long the first of them waits for the commit.
GROUP_LIMIT: Final = 32

Work = Callable[[sqlite3.Connection], T]
#: What a unit of work ended with: its result, or what it raised.
_Outcome = tuple[Any, BaseException | None]


class _Unit(Generic[T]):
    """A unit of work on its way to the thread: ``alone`` runs it by itself; ``member`` (a write that may
    share a commit) runs it inside a transaction the thread opened and will commit. Each is given the
    connection, ``None`` before it is opened or once it is closed."""

    __slots__ = ("alone", "future", "member")

    def __init__(
        self,
        future: asyncio.Future[T],
        alone: Callable[[sqlite3.Connection | None], T],
        member: Callable[[sqlite3.Connection | None], T] | None,
    ) -> None:
        self.future = future
        self.alone = alone
        self.member = member


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
        self._name = name
        self._units: queue.SimpleQueue[_Unit[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: sqlite3.Connection | None = None  # the thread's own: only the thread reads or sets it

    async def open(self) -> None:
        """Create the file, connect (autocommit: transactions are the work's own) and run ``setup`` on the connection;
        a failure closes it and the thread, and raises."""

        def connect(_: sqlite3.Connection | None) -> None:
            self._create(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                self._setup(db)
            except BaseException:
                db.close()
                raise
            self._db = db

        self._loop = asyncio.get_running_loop()
        # A daemon: close() ends it; a process that exits without closing leaves no caller waiting, and a commit
        # cut short by the exit is rolled back by SQLite's own log when the file is next opened.
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        try:
            await asyncio.shield(self._submit(connect, None))  # shielded: never skipped once queued
        except BaseException:
            self._stop()
            raise

    async def close(self) -> None:
        """Close the connection and its thread, once what was queued before has run."""
        if self._thread is None:
            return
        try:
            await asyncio.shield(self._submit(self._disconnect, None))
        finally:
            self._stop()

    async def run(self, work: Work[T]) -> T:
        """Run ``work`` on the connection's thread; its failures are raised here."""
        return await self._submit(_opened(work, self.path), None)

    async def write(self, member: Work[T], alone: Work[T]) -> T:
        """Run a write on the connection's thread: ``member`` inside a transaction it may share with the writes
        queued with it (it neither begins nor commits), or, when there are none or that transaction failed,
        ``alone`` (the same write in a transaction of its own). Returns once its commit is on the disk."""
        return await self._submit(_opened(alone, self.path), _opened(member, self.path))

    def _submit(
        self,
        alone: Callable[[sqlite3.Connection | None], T],
        member: Callable[[sqlite3.Connection | None], T] | None,
    ) -> asyncio.Future[T]:
        if self._thread is None or self._loop is None:
            raise RuntimeError(f"the SQLite file {self.path} used before open() or after close()")
        future: asyncio.Future[T] = self._loop.create_future()
        self._units.put(_Unit(future, alone, member))
        return future

    def _stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._units.put(None)
            thread.join()

    # -- on the thread ---------------------------------------------------------------------------------------

    def _serve(self) -> None:
        """Run the units in order, the writes queued next to each other in one transaction; ``None`` ends it."""
        while True:
            batch = [self._units.get()]
            while batch[-1] is not None and len(batch) < GROUP_LIMIT:
                try:
                    batch.append(self._units.get_nowait())
                except queue.Empty:
                    break
            group: list[_Unit[Any]] = []
            for unit in batch:
                if unit is not None and unit.member is not None:
                    group.append(unit)
                    continue
                self._run_together(group)
                group = []
                if unit is None:
                    self._disconnect(self._db)
                    return
                self._run_together([unit])
            self._run_together(group)

    def _disconnect(self, db: sqlite3.Connection | None) -> None:
        if db is not None:
            self._db = None
            db.close()

    def _run_together(self, units: list[_Unit[Any]]) -> None:
        live = [unit for unit in units if not unit.future.cancelled()]  # skipped, as an executor skips them
        if not live:
            return
        outcomes = self._together(live) if len(live) > 1 else [_outcome(live[0].alone, self._db)]
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(_resolve, live, outcomes)  # one wake-up for them all

    def _together(self, units: list[_Unit[Any]]) -> list[_Outcome]:
        """Run writes in one transaction; if any of them, or the commit, fails, roll it all back and run each
        alone."""
        db = self._db
        if db is None:
            return [_outcome(unit.alone, db) for unit in units]  # each raises what a closed file raises
        try:
            db.execute("BEGIN IMMEDIATE")
            results = [unit.member(db) for unit in units if unit.member is not None]
            db.execute("COMMIT")
        except BaseException:  # each write runs again alone, and hears of its own failure
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                # Running them again could commit a part of what failed: every write hears of this instead.
                return [(None, exc)] * len(units)
            return [_outcome(unit.alone, db) for unit in units]
        return [(result, None) for result in results]


def _outcome(work: Callable[[sqlite3.Connection | None], Any], db: sqlite3.Connection | None) -> _Outcome:
    try:
        return work(db), None
    except BaseException as exc:  # handed to the caller, as an executor would
        return None, exc


def _resolve(units: list[_Unit[Any]], outcomes: list[_Outcome]) -> None:
    for unit, (result, error) in zip(units, outcomes, strict=True):
        if unit.future.done():  # cancelled while its work ran
            continue
        if error is None:
            unit.future.set_result(result)
        else:
            unit.future.set_exception(error)


def _opened(work: Work[T], path: Path) -> Callable[[sqlite3.Connection | None], T]:
    def call(db: sqlite3.Connection | None) -> T:
        if db is None:
            raise RuntimeError(f"the SQLite file {path} used before open() or after close()")
        return work(db)

    return call


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


__all__ = ["GROUP_LIMIT", "Database", "immediately"]
