"""The state the workers of one machine share without Redis: tables of the embedded SQLite file.

The conversations' file (``MINATO_SESSION_STORE``) also holds a conversation's turn lease, each
key's token bucket and quota minutes, and session-to-backend affinity, in tables of their own
(``state_*``: the sessions schema and its migrations never see them). They are reached through a
connection of their own on a thread of its own, so a worker waiting for a lease never queues behind
a conversation's commit. Commits are ``synchronous=NORMAL``: a lease or a counter need not survive
a power cut (a lease expires anyway); ``busy_timeout`` makes the workers wait for each other.

Every failure of SQLite (the file locked beyond the busy timeout, a full or failing disk) is a
:class:`~minato.errors.StateUnavailableError`: the request is refused, never let past its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog

from minato.errors import StateUnavailableError
from minato.state.memory import LocalTurnLocks, take_one
from minato.state.protocols import HeldTurn, SharedState
from minato.state.quota import BUCKET_SECONDS, WINDOW_MINUTES, Standing, standing
from minato.state.sessions.files import create_private

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.settings import Settings
    from minato.state.sessions.store import SessionStore

T = TypeVar("T")
logger = structlog.get_logger("minato.state")

#: Seconds a worker waits for another one's write before the request is refused.
BUSY_TIMEOUT_SECONDS: Final = 5.0
#: How often a worker looks again at a lease another worker holds: soon at first, then less often.
FIRST_POLL_SECONDS: Final = 0.005
LAST_POLL_SECONDS: Final = 0.1
#: Seconds between sweeps of expired affinity entries (by whichever worker puts one).
AFFINITY_SWEEP_SECONDS: Final = 60.0
UNAVAILABLE: Final = "the shared state in the embedded store cannot answer; try again shortly"

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS state_leases (owner TEXT NOT NULL, session_id TEXT NOT NULL, "
    "token TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (owner, session_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "last REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_quota (key TEXT NOT NULL, minute INTEGER NOT NULL, "
    "tokens INTEGER NOT NULL, PRIMARY KEY (key, minute)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state_affinity (key TEXT PRIMARY KEY, backend TEXT NOT NULL, "
    "expires_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS state_affinity_by_expiry ON state_affinity (expires_at)",
)


class _Database:
    """The state's connection to the file, and the one thread every query of it runs on."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minato-state")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Connect, and create the state's tables if they are missing; drop leases long expired."""

        def connect() -> sqlite3.Connection:
            create_private(self.path)  # the store made it so already, unless the state is opened first
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                _immediately(db, _create_tables)
            except BaseException:
                db.close()
                raise
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            raise StateUnavailableError(UNAVAILABLE) from _logged(exc, self.path)

    async def close(self) -> None:
        """Close the connection and its thread."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` (one statement, or reads that need not agree) on the state's thread."""
        return await self._run(work, write=False)

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction: it holds the file's write lock from its
        first read, so no other worker changes what it read before it commits."""
        return await self._run(work, write=True)

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        def call() -> T:
            db = self._db
            if db is None:
                raise RuntimeError("shared state used before open() or after close()")
            return _immediately(db, work) if write else work(db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StateUnavailableError(UNAVAILABLE) from _logged(exc, self.path)


def _immediately(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _create_tables(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        db.execute(statement)
    db.execute("DELETE FROM state_leases WHERE expires_at < ?", (time.time(),))


def _logged(exc: sqlite3.Error, path: Path) -> sqlite3.Error:
    logger.warning("shared_state_unavailable", store="sqlite", path=str(path), error=str(exc))
    return exc


class _Lease:
    """A conversation's turn held by this worker: its row in ``state_leases`` (with this holding's
    token) and, around it, the worker's own lock of the conversation."""

    __slots__ = ("_local", "_locks", "_renewal", "key", "token")

    def __init__(self, locks: SqliteTurnLocks, key: tuple[str, str], token: str, local: HeldTurn) -> None:
        self._locks = locks
        self.key = key
        self.token = token
        self._local: HeldTurn | None = local
        self._renewal = locks.start_renewal(key, token)

    def release(self) -> None:
        """Stop renewing and give the lease back, on a task of its own."""
        if self._local is not None:
            local, self._local = self._local, None
            self._renewal.cancel()
            self._locks.spawn(self._locks.give_back(self.key, self.token, local))


class SqliteTurnLocks:
    """One turn at a time per conversation, across the workers sharing the file, through leases.

    A worker first takes its own lock of the conversation (its other requests for it wait there, in
    order, without querying), then the lease row: taken when absent or expired, else looked at again
    after 5 ms, doubling up to 100 ms. The holder renews it every third of ``lease`` seconds; a lease
    whose holder died expires after ``lease`` seconds. The worker's own next turn starts as soon as
    the lease row is gone, with no wait.
    """

    def __init__(self, database: _Database, lease: float) -> None:
        self._database = database
        self._lease = lease
        self._local = LocalTurnLocks()
        self._renewals: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Task[None]] = set()  # leases being given back

    async def acquire(self, owner: str, session_id: str) -> HeldTurn:
        """Wait for the conversation's turn in this worker, then for its lease; hold both."""
        local = await self._local.acquire(owner, session_id)
        key = (owner, session_id)
        token = secrets.token_hex(16)
        try:
            delay = FIRST_POLL_SECONDS
            while not await self._take(key, token):
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_POLL_SECONDS)
        except BaseException:
            local.release()
            raise
        return _Lease(self, key, token, local)

    async def _take(self, key: tuple[str, str], token: str) -> bool:
        """Take the lease if it is free; a cancelled wait gives back what the attempt took anyway."""
        lease = self._lease

        def take(db: sqlite3.Connection) -> bool:
            now = time.time()
            row = db.execute("SELECT expires_at FROM state_leases WHERE owner = ? AND session_id = ?", key).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute("INSERT OR REPLACE INTO state_leases VALUES (?, ?, ?, ?)", (*key, token, now + lease))
            return True

        attempt = asyncio.ensure_future(self._database.write(take))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._undo(done, key, token))
            raise

    def _undo(self, attempt: asyncio.Future[bool], key: tuple[str, str], token: str) -> None:
        if not attempt.cancelled() and attempt.exception() is None and attempt.result():
            self.spawn(self._delete(key, token))

    def start_renewal(self, key: tuple[str, str], token: str) -> asyncio.Task[None]:
        """Renew a lease just taken, on a task of its own, until it is cancelled."""
        return self._keep(self._renewals, self._renew(key, token))

    async def _renew(self, key: tuple[str, str], token: str) -> None:
        """Extend a held lease every third of its life, until it is released (or was lost)."""
        lease = self._lease

        def extend(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE state_leases SET expires_at = ? WHERE owner = ? AND session_id = ? AND token = ?",
                (time.time() + lease, *key, token),
            )
            return cursor.rowcount == 1

        while True:
            await asyncio.sleep(lease / 3)
            try:
                kept = await self._database.write(extend)
            except StateUnavailableError:  # logged; the lease lives on until it expires: try again
                continue
            if not kept:  # it expired before this renewal (a stalled worker): another turn may run
                logger.warning("turn_lease_lost", owner=key[0], session=key[1])
                return

    async def give_back(self, key: tuple[str, str], token: str, local: HeldTurn) -> None:
        """Delete the lease row (if it is still this holding's), then let this worker's next turn go."""
        try:
            await self._delete(key, token)
        finally:
            local.release()

    async def _delete(self, key: tuple[str, str], token: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM state_leases WHERE owner = ? AND session_id = ? AND token = ?", (*key, token))

        with contextlib.suppress(StateUnavailableError):  # logged; the lease expires by itself
            await self._database.write(delete)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of its own, which no request's cancellation reaches."""
        self._keep(self._pending, work)

    @staticmethod
    def _keep(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(tasks.discard)
        return task

    async def close(self) -> None:
        """Finish giving leases back; stop renewing (a lease still held then expires by itself)."""
        for task in self._renewals:
            task.cancel()
        await asyncio.gather(*self._renewals, *self._pending, return_exceptions=True)


class SqliteRateLimiter:
    """The token bucket of :class:`~minato.state.memory.LocalRateLimiter`, one row per key, read and
    written back in one transaction so workers never both take the last request."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    async def check(self, key: str, per_minute: int) -> float:
        """Take one request from ``key``'s bucket; return 0, or the seconds until one is there."""

        def take(db: sqlite3.Connection) -> float:
            now = time.time()
            row = db.execute("SELECT tokens, last FROM state_buckets WHERE key = ?", (key,)).fetchone()
            tokens, last = row if row is not None else (float(per_minute), now)
            tokens, wait = take_one(tokens, last, now, per_minute)
            # Rows are only made for keys with a rate (configured keys): a bounded table.
            db.execute("INSERT OR REPLACE INTO state_buckets VALUES (?, ?, ?)", (key, tokens, now))
            return wait

        return await self._database.write(take)


class SqliteQuota:
    """The rolling 24 h of :class:`~minato.state.memory.TokenQuota`: a row per key and minute."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    async def check(self, caller: Caller) -> Standing:
        """Where the key stands against its quota."""
        limit = caller.tokens_per_day
        if not limit:
            return Standing(0.0, 0)

        def count(db: sqlite3.Connection) -> Standing:
            now = time.time()
            buckets = db.execute(
                "SELECT minute, tokens FROM state_quota WHERE key = ? AND minute >= ? ORDER BY minute",
                (caller.fingerprint, int(now // BUCKET_SECONDS) - WINDOW_MINUTES),
            ).fetchall()
            return standing(buckets, sum(tokens for _, tokens in buckets), limit, now)

        return await self._database.read(count)

    async def charge(self, caller: Caller, tokens: int) -> None:
        """Count ``tokens`` for a key with a quota, and forget its minutes out of the window."""
        if not caller.tokens_per_day or tokens <= 0:
            return

        def add(db: sqlite3.Connection) -> None:
            minute = int(time.time() // BUCKET_SECONDS)
            db.execute(
                "INSERT INTO state_quota VALUES (?, ?, ?) "
                "ON CONFLICT (key, minute) DO UPDATE SET tokens = tokens + excluded.tokens",
                (caller.fingerprint, minute, tokens),
            )
            db.execute(
                "DELETE FROM state_quota WHERE key = ? AND minute < ?", (caller.fingerprint, minute - WINDOW_MINUTES)
            )

        await self._database.write(add)


class SqliteAffinity:
    """Conversation → backend, one row each, forgotten ``ttl`` seconds after it was last put; at most
    ``max_entries`` rows are kept past a sweep (the least recently put go first)."""

    def __init__(self, database: _Database, max_entries: int, ttl: float) -> None:
        self._database = database
        self._max_entries = max_entries
        self._ttl = ttl
        self._swept = 0.0

    async def get(self, key: str) -> str | None:
        """The backend ``key`` last used, unless that was longer than ``ttl`` ago."""

        def find(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT backend FROM state_affinity WHERE key = ? AND expires_at > ?", (key, time.time())
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._database.read(find)

    async def put(self, key: str, backend: str) -> None:
        """Remember ``backend`` for ``key``; now and then forget the expired and the excess."""
        now = time.time()
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

        await self._database.write(remember)


class SqliteHealth:
    """Whether the state's connection to the file answers."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    @property
    def name(self) -> str:
        """``sqlite``."""
        return "sqlite"

    async def ping(self) -> str | None:
        """``None`` when a query of the state's tables answers, else why not."""
        try:
            await self._database.read(lambda db: db.execute("SELECT COUNT(*) FROM state_leases").fetchone())
        except StateUnavailableError as exc:
            return exc.detail
        return None


class SqliteState:
    """The state of the workers sharing one SQLite file: turn leases, rate limits, quotas, affinity."""

    def __init__(self, path: Path, settings: Settings, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self._database = _Database(path, busy_timeout)
        self.turns = SqliteTurnLocks(self._database, settings.turn_lease)
        self.limiter = SqliteRateLimiter(self._database)
        self.quota = SqliteQuota(self._database)
        self.affinity = SqliteAffinity(self._database, settings.max_sessions, settings.session_ttl)
        self.health = SqliteHealth(self._database)

    async def open(self) -> None:
        """Connect to the file and create the state's tables if they are missing."""
        await self._database.open()

    async def close(self) -> None:
        """Finish giving leases back, then close the connection."""
        await self.turns.close()
        await self._database.close()

    def shared(self, store: SessionStore) -> SharedState:
        """Everything a runtime uses: this state, and ``store`` for the conversations."""
        return SharedState(
            store=store,
            turns=self.turns,
            limiter=self.limiter,
            quota=self.quota,
            affinity=self.affinity,
            health=self.health,
        )


@asynccontextmanager
async def open_sqlite_state(path: Path, store: SessionStore, settings: Settings) -> AsyncIterator[SharedState]:
    """The workers' shared state in the file at ``path``, with ``store`` (an opened store of that file)."""
    state = SqliteState(path, settings)
    await state.open()
    try:
        yield state.shared(store)
    finally:
        await state.close()


__all__ = [
    "SqliteAffinity",
    "SqliteHealth",
    "SqliteQuota",
    "SqliteRateLimiter",
    "SqliteState",
    "SqliteTurnLocks",
    "open_sqlite_state",
]
