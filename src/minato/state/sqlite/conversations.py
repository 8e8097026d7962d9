"""Conversations in an embedded SQLite database: the store's queries, on a thread of its own.

Transactions, and writes that get past damaged pages. What the file is made of, and how damage is
recognised, is :mod:`minato.state.sqlite.schema`'s.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TypeVar

import msgspec
import structlog

from minato.errors import SessionDamagedError
from minato.state.conversations import Bounds, Caps, Session, SessionSummary, StoredMessage, trim_plan
from minato.state.sqlite.database import Database
from minato.state.sqlite.files import prepare_store_file
from minato.state.sqlite.schema import (
    INSERT_MESSAGE,
    SELECT_MESSAGES,
    is_damage,
    message_of,
    message_row,
    prepare_schema,
    report_damage,
)

T = TypeVar("T")
R = TypeVar("R", bound=tuple[object, ...])
logger = structlog.get_logger("minato.sessions")

_STORED_IMAGE_BYTES: Final = (
    "SELECT COALESCE(SUM(m.image_bytes), 0) FROM messages m JOIN sessions s ON s.sid = m.sid WHERE m.image_bytes > 0"
)
_IMAGES_OLDEST_FIRST: Final = (
    "SELECT m.sid, m.seq, m.image_bytes FROM messages m JOIN sessions s ON s.sid = m.sid "
    "WHERE m.image_bytes > 0 ORDER BY m.at"
)
_STRIP_IMAGES: Final = "UPDATE messages SET images = NULL, image_bytes = 0 WHERE sid = ? AND seq = ?"
# Making room (see :class:`~minato.state.conversations.Caps`); ``sid != ?`` spares the conversation written.
_LEAST_RECENT_OF: Final = (
    "SELECT sid, id FROM sessions WHERE owner = ? AND sid != ? ORDER BY last_active, id DESC LIMIT ?"
)
_FIND: Final = "SELECT sid FROM sessions WHERE owner = ? AND id = ?"
_SIZES: Final = "SELECT seq, image_bytes FROM messages WHERE sid = ? ORDER BY seq"
_HELD_BY: Final = "SELECT owner, held FROM session_owners WHERE owner = ?"
_OVER_THE_KEY_CAP: Final = "SELECT owner, held FROM session_owners WHERE held > ? AND owner != ''"
_BIGGEST_HOLDERS: Final = "SELECT owner FROM session_owners ORDER BY held DESC, oldest, owner LIMIT 2"


class SqliteStore:
    """Conversations in an embedded SQLite database (WAL mode), on a thread of its own.

    Every query runs on one dedicated thread, so the event loop never waits on the disk and
    token relay never waits on a commit. Commits are ``synchronous=FULL``: a turn that was
    recorded survives a ``kill -9`` and a power cut. Turns recorded at the same moment share one
    commit (:meth:`~minato.state.sqlite.database.Database.write`), each answered only once it is
    on the disk: one sync of the log for all of them, the same promise for each.

    Damaged pages (a bad disk, a copy taken mid-write) are reported at open; a conversation on
    them answers :class:`SessionDamagedError` and can still be deleted, and the sweeps skip it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._database = Database(path, "minato-sqlite", prepare_store_file, functools.partial(_prepare, path=path))

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` on the store's thread: in one transaction, or (``transaction=False``)
        managing its own."""
        return await self._database.run(functools.partial(_in_transaction, work) if transaction else work)

    async def _run_on(
        self, owner: str, session_id: str, work: Callable[[sqlite3.Connection], T], *, transaction: bool = True
    ) -> T:
        """Run work on one conversation; damage becomes :class:`SessionDamagedError`."""
        return await _damage_named(owner, session_id, self._run(work, transaction=transaction))

    async def _write_on(
        self, owner: str, session_id: str, write: Callable[[sqlite3.Connection], dict[int, tuple[str, str]]]
    ) -> None:
        """Run a write to one conversation that may delete others (see :func:`_then_forget`), sharing its commit
        with the writes queued with it; damage becomes :class:`SessionDamagedError`."""
        together = functools.partial(_forgetting, write)
        alone = functools.partial(_then_forget, write)
        await _damage_named(owner, session_id, self._database.write(together, alone))

    async def open(self) -> None:
        """Create the database file and schema on first start, migrate an older schema, and
        report damaged pages."""
        await self._database.open()

    async def close(self) -> None:
        """Close the database and its thread."""
        await self._database.close()

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""

        def work(db: sqlite3.Connection) -> Session | None:
            row = db.execute(
                "SELECT sid, system_prompt, created_at, last_active FROM sessions WHERE owner = ? AND id = ?",
                (owner, session_id),
            ).fetchone()
            if row is None:
                return None
            messages = [message_of(message) for message in db.execute(SELECT_MESSAGES, (row[0],))]
            return Session(
                owner=owner,
                id=session_id,
                system_prompt=row[1],
                messages=messages,
                created_at=row[2],
                last_active=row[3],
            )

        return await self._run_on(owner, session_id, work)

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id."""

        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT owner FROM sessions WHERE id = ? ORDER BY owner", (session_id,))
            return [owner for (owner,) in rows]

        return await self._run(work)

    async def append(
        self, owner: str, session_id: str, messages: list[StoredMessage], bounds: Bounds, *, caps: Caps, now: float
    ) -> None:
        """Add messages, trim and make room, in one transaction."""

        def write(db: sqlite3.Connection) -> dict[int, tuple[str, str]]:
            found = db.execute(_FIND, (owner, session_id)).fetchone()
            # The plan is made on what is kept and what comes (as trim_plan() reads a whole conversation),
            # so the conversation's row is written once, and its messages read once.
            held = [] if found is None else db.execute(_SIZES, found).fetchall()
            first = held[-1][0] + 1 if held else 1
            seqs = [seq for seq, _ in held] + list(range(first, first + len(messages)))
            drop, strip = trim_plan([size for _, size in held] + [m.image_bytes for m in messages], bounds)
            count = len(seqs) - drop
            if found is None:
                sid = _create(db, owner, session_id, now, count)
            else:
                sid = found[0]
                db.execute("UPDATE sessions SET last_active = ?, message_count = ? WHERE sid = ?", (now, count, sid))
            db.executemany(
                INSERT_MESSAGE,
                [(sid, seq, *message_row(m)) for seq, m in zip(seqs[len(held) :], messages, strict=True)],
            )
            if drop:
                db.execute("DELETE FROM messages WHERE sid = ? AND seq <= ?", (sid, seqs[drop - 1]))
            if strip:
                db.execute(
                    "UPDATE messages SET images = NULL, image_bytes = 0 WHERE sid = ? AND seq <= ? AND image_bytes > 0",
                    (sid, seqs[drop + strip - 1]),
                )
            return _make_room(db, caps, owner, keep=sid)

        await self._write_on(owner, session_id, write)

    async def set_system_prompt(
        self, owner: str, session_id: str, prompt: str | None, *, caps: Caps, now: float
    ) -> None:
        """Set or remove the system prompt, and make room."""

        def write(db: sqlite3.Connection) -> dict[int, tuple[str, str]]:
            sid = _touch(db, owner, session_id, now)
            db.execute("UPDATE sessions SET system_prompt = ? WHERE sid = ?", (prompt, sid))
            return _make_room(db, caps, owner, keep=sid)

        await self._write_on(owner, session_id, write)

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation: its row first, then its messages (which may be damaged)."""

        def work(db: sqlite3.Connection) -> None:
            with db:
                row = db.execute("SELECT sid FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)).fetchone()
                if row is None:
                    return
                db.execute("DELETE FROM sessions WHERE sid = ?", row)
            _delete_messages(db, {row[0]: (owner, session_id)})

        await self._run_on(owner, session_id, work, transaction=False)

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of conversations (never reading their messages)."""

        def work(db: sqlite3.Connection) -> tuple[list[SessionSummary], int]:
            if owner is None:
                total = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
                rows = db.execute(
                    "SELECT owner, id, message_count, last_active FROM sessions "
                    "ORDER BY last_active DESC, id, owner LIMIT ? OFFSET ?",
                    (limit, offset),
                ).fetchall()
            else:
                total = db.execute("SELECT COUNT(*) FROM sessions WHERE owner = ?", (owner,)).fetchone()[0]
                rows = db.execute(
                    "SELECT owner, id, message_count, last_active FROM sessions WHERE owner = ? "
                    "ORDER BY last_active DESC, id LIMIT ? OFFSET ?",
                    (owner, limit, offset),
                ).fetchall()
            return [SessionSummary(owner=o, id=i, message_count=n, last_active=t) for o, i, n, t in rows], total

        return await self._run(work)

    async def expire(self, idle_before: float, caps: Caps) -> int:
        """Drop idle conversations, then those beyond the caps; damaged messages are skipped."""

        def write(db: sqlite3.Connection) -> dict[int, tuple[str, str]]:
            idle = db.execute("SELECT sid, owner, id FROM sessions WHERE last_active < ?", (idle_before,)).fetchall()
            db.executemany("DELETE FROM sessions WHERE sid = ?", [(sid,) for sid, _, _ in idle])
            return {sid: (owner, session_id) for sid, owner, session_id in idle} | _make_room(db, caps, None, keep=0)

        return await self._run(functools.partial(_then_forget, write), transaction=False)

    async def enforce_image_budget(self, budget: int) -> int:
        """Strip the oldest images of the whole store until it is within ``budget``; images on
        damaged pages are skipped (and logged)."""

        def work(db: sqlite3.Connection) -> int:
            # Only live conversations count: rows left on damaged pages by a delete are unreachable.
            excess = db.execute(_STORED_IMAGE_BYTES).fetchone()[0] - budget
            if excess <= 0:
                return 0
            chosen = []
            for sid, seq, size in db.execute(_IMAGES_OLDEST_FIRST):
                chosen.append((sid, seq))
                excess -= size
                if excess <= 0:
                    break

            def damaged(row: tuple[int, int], error: str) -> None:
                logger.error("session_image_on_damaged_page", sid=row[0], seq=row[1], error=error)

            return _for_each(db, _STRIP_IMAGES, chosen, damaged)

        return await self._run(work, transaction=False)


def _prepare(db: sqlite3.Connection, *, path: Path) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    prepare_schema(db, path)
    report_damage(db, path)
    db.isolation_level = "DEFERRED"


def _in_transaction(work: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> T:
    with db:  # one transaction: commit on success, roll back on error
        return work(db)


def _for_each(db: sqlite3.Connection, sql: str, rows: list[R], damaged: Callable[[R, str], None]) -> int:
    """Run ``sql`` for every row in one transaction; if damaged pages stop it, run it row by row,
    each in its own transaction, so a damaged page costs only its own rows. Return how many rows
    succeeded; ``damaged`` hears of the others.

    Separate transactions, not savepoints: once SQLite met a damaged page in a write, committing
    the rest of that transaction fails too.
    """
    if _damage_stopping(db, functools.partial(db.executemany, sql, rows)) is None:
        return len(rows)
    done = 0
    for row in rows:
        problem = _damage_stopping(db, functools.partial(db.execute, sql, row))
        if problem is None:
            done += 1
        else:
            damaged(row, problem)
    return done


def _damage_stopping(db: sqlite3.Connection, write: Callable[[], object]) -> str | None:
    """Run ``write`` in a transaction of its own; return what damage stopped it, if any (any other
    failure raises)."""
    try:
        with db:
            write()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return str(exc)
    return None


def _delete_messages(db: sqlite3.Connection, conversations: dict[int, tuple[str, str]]) -> None:
    """Delete the messages of conversations whose rows are already gone (and committed).

    Messages on damaged pages stay where they are, unreachable: their ``sid`` is never used again.
    """

    def damaged(row: tuple[int], error: str) -> None:
        owner, session_id = conversations[row[0]]
        logger.error("session_messages_left_damaged", owner=owner, session=session_id, sid=row[0], error=error)

    _for_each(db, "DELETE FROM messages WHERE sid = ?", [(sid,) for sid in conversations], damaged)


def _forgetting(write: Callable[[sqlite3.Connection], dict[int, tuple[str, str]]], db: sqlite3.Connection) -> int:
    """Run ``write`` and delete the messages of the conversations whose rows it deleted (``sid`` ->
    ``(owner, id)``), in the transaction the caller holds; return how many conversations went."""
    gone = write(db)
    if gone:
        db.executemany("DELETE FROM messages WHERE sid = ?", [(sid,) for sid in gone])
    return len(gone)


def _then_forget(write: Callable[[sqlite3.Connection], dict[int, tuple[str, str]]], db: sqlite3.Connection) -> int:
    """Run ``write``, and delete the messages of the conversations whose rows it deleted, in one transaction
    (one commit: a write that makes room costs no extra sync). If damaged pages stop deleting those messages,
    write again, then delete them past the damage. Return how many conversations went."""
    try:
        with db:
            return _forgetting(write, db)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        with db:  # the damage may be the written conversation's own: then this raises it again
            gone = write(db)
        _delete_messages(db, gone)
    return len(gone)


def _make_room(db: sqlite3.Connection, caps: Caps, owner: str | None, *, keep: int) -> dict[int, tuple[str, str]]:
    """Delete the rows of the conversations beyond ``caps``: ``owner``'s (``None``: every owner's) beyond
    the per-key cap, then the least recently active of the owner holding the most while the store is
    over its cap; never conversation ``keep`` (a ``sid``; 0: none). Return what was deleted, by ``sid``."""
    gone: dict[int, tuple[str, str]] = {}

    def forget(holder: str, count: int) -> int:
        rows = db.execute(_LEAST_RECENT_OF, (holder, keep, count)).fetchall()
        db.executemany("DELETE FROM sessions WHERE sid = ?", [(sid,) for sid, _ in rows])
        gone.update((sid, (holder, session_id)) for sid, session_id in rows)
        return len(rows)

    over = db.execute(_OVER_THE_KEY_CAP, (caps.max_per_key,)) if owner is None else db.execute(_HELD_BY, (owner,))
    for holder, held in over.fetchall():
        if holder and held > caps.max_per_key:
            forget(holder, held - caps.max_per_key)
    excess = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] - caps.max_sessions
    while excess > 0:
        # The second holder only when the first holds nothing but ``keep``.
        if not any(forget(holder, 1) for (holder,) in db.execute(_BIGGEST_HOLDERS).fetchall()):
            break
        excess -= 1
    return gone


def _touch(db: sqlite3.Connection, owner: str, session_id: str, now: float) -> int:
    """Create the conversation or mark it active; return its ``sid``."""
    row = db.execute(_FIND, (owner, session_id)).fetchone()
    if row is not None:
        db.execute("UPDATE sessions SET last_active = ? WHERE sid = ?", (now, row[0]))
        sid: int = row[0]
        return sid
    return _create(db, owner, session_id, now, 0)


def _create(db: sqlite3.Connection, owner: str, session_id: str, now: float, message_count: int) -> int:
    """Create the conversation (active ``now``, holding ``message_count`` messages); return its ``sid``."""
    # Not an upsert: a conflicting INSERT would still use up an AUTOINCREMENT value.
    created = db.execute(
        "INSERT INTO sessions (owner, id, system_prompt, created_at, last_active, message_count) "
        "VALUES (?, ?, NULL, ?, ?, ?)",
        (owner, session_id, now, now, message_count),
    )
    if created.lastrowid is None:
        raise RuntimeError("SQLite did not report the new conversation's sid")
    return created.lastrowid


async def _damage_named(owner: str, session_id: str, work: Awaitable[T]) -> T:
    """Await work on one conversation; damage becomes :class:`SessionDamagedError`."""
    try:
        return await work
    except (sqlite3.DatabaseError, msgspec.DecodeError) as exc:
        if not is_damage(exc):
            raise
        logger.warning("session_damaged", owner=owner, session=session_id, error=str(exc))
        raise SessionDamagedError(owner, session_id, str(exc)) from exc
