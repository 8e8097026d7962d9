"""Where conversations live: one small interface, an in-memory store and a SQLite store.

A conversation is identified by its owner (the fingerprint of the key that created it) and its id:
two keys can each have a conversation ``abc``. A shared store for several Minato replicas (Redis)
would be one more class with these methods; nothing above this module knows which store it talks to.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Protocol, TypeVar

import msgspec
import structlog

from minato.errors import SessionDamagedError
from minato.sessions.model import Session, SessionSummary, StoredMessage, trim_plan

T = TypeVar("T")
R = TypeVar("R", bound=tuple[object, ...])
logger = structlog.get_logger("minato.sessions")

MEMORY_URL: Final = "memory://"
SCHEMA_VERSION: Final = 2
#: Conversations named in the start-up damage report; the count covers all of them.
DAMAGE_REPORT_LIMIT: Final = 20
_images_encoder: Final = msgspec.json.Encoder()
_images_decoder: Final = msgspec.json.Decoder(list[str])
# Result codes meaning the file's content is damaged (not a transient lock or I/O failure).
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FORMAT})


class SessionStore(Protocol):
    """Persistence of conversations. Every method is safe to call from the event loop.

    Conversations are addressed by ``(owner, session_id)``; ``owner`` is a key fingerprint, or
    ``""`` for keyless deployments.
    """

    async def open(self) -> None:
        """Prepare the store (create files, schema, migrate; report damage)."""

    async def close(self) -> None:
        """Release the store's resources."""

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``; raise :class:`SessionDamagedError` if it cannot be read."""

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id, sorted."""

    async def append(
        self,
        owner: str,
        session_id: str,
        messages: list[StoredMessage],
        *,
        max_messages: int,
        image_budget: int,
        now: float,
    ) -> None:
        """Add messages to a conversation (creating it), then trim it to its bounds."""

    async def set_system_prompt(self, owner: str, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or (with ``None``) remove a conversation's system prompt, creating it if needed."""

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation (idempotent); succeeds even if its messages are damaged."""

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of one owner's conversations (``None``: every owner's), most recently
        active first, and their total count."""

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop conversations idle since before ``idle_before``, then the least recently active
        beyond ``max_sessions``; return how many were dropped."""

    async def enforce_image_budget(self, budget: int) -> int:
        """Drop the oldest images of the whole store (their text stays) until at most ``budget``
        bytes are kept; return how many messages lost their images."""


def open_store(url: str) -> SessionStore:
    """Return the store a ``MINATO_SESSION_STORE`` value names."""
    if url == MEMORY_URL:
        return MemoryStore()
    return SqliteStore(Path(url.removeprefix("sqlite://")))


def _image_bytes(session: Session | None) -> int:
    return sum(m.image_bytes for m in session.messages) if session else 0


class MemoryStore:
    """Conversations in a dict: fast, and gone with the process."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], Session] = {}
        self._image_bytes = 0  # kept up to date so the store-wide budget costs nothing per turn

    async def open(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Forget everything."""
        self._sessions.clear()
        self._image_bytes = 0

    def _put(self, key: tuple[str, str], session: Session | None) -> None:
        self._image_bytes += _image_bytes(session) - _image_bytes(self._sessions.get(key))
        if session is None:
            self._sessions.pop(key, None)
        else:
            self._sessions[key] = session

    def _current(self, owner: str, session_id: str, now: float) -> Session:
        return self._sessions.get((owner, session_id)) or Session(
            owner=owner, id=session_id, system_prompt=None, messages=[], created_at=now, last_active=now
        )

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""
        return self._sessions.get((owner, session_id))

    async def owners_of(self, session_id: str) -> list[str]:
        """Return the owners having a conversation with this id."""
        return sorted(owner for owner, sid in self._sessions if sid == session_id)

    async def append(
        self,
        owner: str,
        session_id: str,
        messages: list[StoredMessage],
        *,
        max_messages: int,
        image_budget: int,
        now: float,
    ) -> None:
        """Add messages, then trim."""
        current = self._current(owner, session_id, now)
        combined = [*current.messages, *messages]
        drop, strip = trim_plan([m.image_bytes for m in combined], max_messages, image_budget)
        kept = combined[drop:]
        kept[:strip] = [msgspec.structs.replace(message, images=[]) for message in kept[:strip]]
        self._put((owner, session_id), msgspec.structs.replace(current, messages=kept, last_active=now))

    async def set_system_prompt(self, owner: str, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or remove the system prompt."""
        current = self._current(owner, session_id, now)
        self._put((owner, session_id), msgspec.structs.replace(current, system_prompt=prompt, last_active=now))

    async def delete(self, owner: str, session_id: str) -> None:
        """Forget a conversation."""
        self._put((owner, session_id), None)

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of conversations."""
        chosen = [s for s in self._sessions.values() if owner is None or s.owner == owner]
        chosen.sort(key=lambda s: (-s.last_active, s.id, s.owner))
        page = [
            SessionSummary(owner=s.owner, id=s.id, message_count=len(s.messages), last_active=s.last_active)
            for s in chosen[offset : offset + limit]
        ]
        return page, len(chosen)

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop idle conversations, then the oldest beyond the cap."""
        doomed = {key for key, s in self._sessions.items() if s.last_active < idle_before}
        alive = sorted((k for k in self._sessions if k not in doomed), key=lambda k: -self._sessions[k].last_active)
        doomed.update(alive[max_sessions:])
        for key in doomed:
            self._put(key, None)
        return len(doomed)

    async def enforce_image_budget(self, budget: int) -> int:
        """Strip the oldest images of the whole store until it is within ``budget``."""
        if self._image_bytes <= budget:
            return 0
        held = sorted(
            (message.at, key, index)
            for key, session in self._sessions.items()
            for index, message in enumerate(session.messages)
            if message.images
        )
        stripped: dict[tuple[str, str], set[int]] = {}
        excess = self._image_bytes - budget
        for _, key, index in held:
            if excess <= 0:
                break
            excess -= self._sessions[key].messages[index].image_bytes
            stripped.setdefault(key, set()).add(index)
        for key, indexes in stripped.items():
            session = self._sessions[key]
            messages = [
                msgspec.structs.replace(m, images=[]) if i in indexes else m for i, m in enumerate(session.messages)
            ]
            self._put(key, msgspec.structs.replace(session, messages=messages))
        return sum(len(indexes) for indexes in stripped.values())


# A surrogate ``sid`` (never reused: AUTOINCREMENT) keys the messages, so a conversation created
# again after its predecessor's messages were left on damaged pages never meets those rows. No
# foreign key cascade: messages are deleted explicitly, so damaged message pages cannot block
# deleting the conversation. ``message_count`` spares listings any read of the messages. In
# ``messages`` the small columns come before ``content`` and ``images``, so reading them never
# walks a large row's overflow pages.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    sid INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    system_prompt TEXT,
    created_at REAL NOT NULL,
    last_active REAL NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (owner, id)
);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (last_active);
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner, last_active);
CREATE INDEX IF NOT EXISTS sessions_by_id ON sessions (id);
CREATE TABLE IF NOT EXISTS messages (
    sid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    image_bytes INTEGER NOT NULL DEFAULT 0,
    image_count INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    at REAL NOT NULL,
    content TEXT NOT NULL,
    images BLOB,
    PRIMARY KEY (sid, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_with_images ON messages (at, image_bytes) WHERE image_bytes > 0;
"""

_MIGRATE_V1: Final = """
ALTER TABLE sessions RENAME TO sessions_v1;
ALTER TABLE messages RENAME TO messages_v1;
DROP INDEX IF EXISTS sessions_by_activity;
{schema}
INSERT INTO sessions (owner, id, system_prompt, created_at, last_active, message_count)
    SELECT '', s.id, s.system_prompt, s.created_at, s.last_active,
           (SELECT COUNT(*) FROM messages_v1 m WHERE m.session_id = s.id)
    FROM sessions_v1 s ORDER BY s.created_at, s.id;
INSERT INTO messages (sid, seq, role, image_bytes, image_count, model, at, content, images)
    SELECT s.sid, m.seq, m.role, minato_image_bytes(m.images), m.image_count, m.model, m.at, m.content, m.images
    FROM messages_v1 m JOIN sessions s ON s.owner = '' AND s.id = m.session_id;
DROP TABLE messages_v1;
DROP TABLE sessions_v1;
"""

_STORED_IMAGE_BYTES: Final = (
    "SELECT COALESCE(SUM(m.image_bytes), 0) FROM messages m JOIN sessions s ON s.sid = m.sid WHERE m.image_bytes > 0"
)
_IMAGES_OLDEST_FIRST: Final = (
    "SELECT m.sid, m.seq, m.image_bytes FROM messages m JOIN sessions s ON s.sid = m.sid "
    "WHERE m.image_bytes > 0 ORDER BY m.at"
)
_STRIP_IMAGES: Final = "UPDATE messages SET images = NULL, image_bytes = 0 WHERE sid = ? AND seq = ?"


def _stored_image_bytes(images: bytes | None) -> int:
    return sum(len(image) for image in _images_decoder.decode(images)) if images else 0


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database's content is damaged (and retrying cannot help)."""
    if isinstance(exc, msgspec.DecodeError):
        return True  # a stored image list that no longer parses
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return isinstance(exc, sqlite3.OperationalError)  # stored text that no longer decodes
    return code & 0xFF in _DAMAGE_CODES


class SqliteStore:
    """Conversations in an embedded SQLite database (WAL mode), on a thread of its own.

    Every query runs on one dedicated thread, so the event loop never waits on the disk and
    token relay never waits on a commit. Commits are ``synchronous=FULL``: a turn that was
    recorded survives a ``kill -9`` and a power cut.

    Damaged pages (a bad disk, a copy taken mid-write) are reported at open; a conversation on
    them answers :class:`SessionDamagedError` and can still be deleted, and the sweeps skip it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minato-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` on the store's thread: in one transaction, or (``transaction=False``)
        managing its own."""

        def call() -> T:
            db = self._db
            if db is None:
                raise RuntimeError("session store used before open()")
            if not transaction:
                return work(db)
            with db:  # one transaction: commit on success, roll back on error
                return work(db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _run_on(
        self, owner: str, session_id: str, work: Callable[[sqlite3.Connection], T], *, transaction: bool = True
    ) -> T:
        """Run work on one conversation; damage becomes :class:`SessionDamagedError`."""
        try:
            return await self._run(work, transaction=transaction)
        except (sqlite3.DatabaseError, msgspec.DecodeError) as exc:
            if not is_damage(exc):
                raise
            logger.warning("session_damaged", owner=owner, session=session_id, error=str(exc))
            raise SessionDamagedError(owner, session_id, str(exc)) from exc

    async def open(self) -> None:
        """Create the database file and schema on first start, migrate an older schema, and
        report damaged pages."""

        def connect() -> sqlite3.Connection:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=5000")
                self._prepare_schema(db)
                self._report_damage(db)
            except BaseException:
                db.close()
                raise
            db.isolation_level = "DEFERRED"
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    def _prepare_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has session schema v{version}; this Minato knows v{SCHEMA_VERSION} (downgrade?)"
            )
        script = _SCHEMA
        if version == 1:
            db.create_function("minato_image_bytes", 1, _stored_image_bytes, deterministic=True)
            script = _MIGRATE_V1.format(schema=_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if version == 1:
            count = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            logger.info("session_store_migrated", path=str(self.path), to_version=SCHEMA_VERSION, sessions=count)

    def _report_damage(self, db: sqlite3.Connection) -> None:
        """Check the whole file's structure; on damage, find which conversations cannot be read."""
        started = time.perf_counter()
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(100)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        seconds = round(time.perf_counter() - started, 3)
        if problems == ["ok"]:
            logger.info("session_store_checked", path=str(self.path), seconds=seconds)
            return
        damaged: list[str] = []
        unreadable = 0
        try:
            conversations = db.execute("SELECT sid, owner, id FROM sessions").fetchall()
        except sqlite3.DatabaseError as exc:
            conversations = []
            problems.append(f"sessions table: {exc}")
        for sid, owner, session_id in conversations:
            try:  # read it as get() does
                for _, images in db.execute("SELECT content, images FROM messages WHERE sid = ?", (sid,)):
                    _stored_image_bytes(images)
            except (sqlite3.DatabaseError, msgspec.DecodeError) as exc:
                if not is_damage(exc):
                    raise
                unreadable += 1
                if len(damaged) < DAMAGE_REPORT_LIMIT:
                    damaged.append(f"{owner}/{session_id}" if owner else session_id)
        logger.error(
            "session_store_damaged",
            path=str(self.path),
            problem_count=len(problems),
            problems=problems[:10],
            damaged_sessions=damaged,
            damaged_session_count=unreadable,
            seconds=seconds,
            hint="GET and turns on a damaged conversation answer 409; DELETE /chat/<id> removes it",
        )

    async def close(self) -> None:
        """Close the database and its thread."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def get(self, owner: str, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""

        def work(db: sqlite3.Connection) -> Session | None:
            row = db.execute(
                "SELECT sid, system_prompt, created_at, last_active FROM sessions WHERE owner = ? AND id = ?",
                (owner, session_id),
            ).fetchone()
            if row is None:
                return None
            messages = [
                StoredMessage(
                    role=role,
                    content=content,
                    images=_images_decoder.decode(images) if images else [],
                    image_count=image_count,
                    model=model,
                    at=at,
                )
                for role, content, images, image_count, model, at in db.execute(
                    "SELECT role, content, images, image_count, model, at FROM messages WHERE sid = ? ORDER BY seq",
                    (row[0],),
                )
            ]
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
        self,
        owner: str,
        session_id: str,
        messages: list[StoredMessage],
        *,
        max_messages: int,
        image_budget: int,
        now: float,
    ) -> None:
        """Add messages and trim, in one transaction."""

        def work(db: sqlite3.Connection) -> None:
            sid = _touch(db, owner, session_id, now)
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE sid = ?", (sid,)).fetchone()[0]
            db.executemany(
                "INSERT INTO messages (sid, seq, role, image_bytes, image_count, model, at, content, images) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        sid,
                        seq + offset,
                        m.role,
                        m.image_bytes,
                        m.image_count,
                        m.model,
                        m.at,
                        m.content,
                        _images_encoder.encode(m.images) if m.images else None,
                    )
                    for offset, m in enumerate(messages, start=1)
                ],
            )
            rows = db.execute("SELECT seq, image_bytes FROM messages WHERE sid = ? ORDER BY seq", (sid,)).fetchall()
            drop, strip = trim_plan([size for _, size in rows], max_messages, image_budget)
            if drop:
                db.execute("DELETE FROM messages WHERE sid = ? AND seq <= ?", (sid, rows[drop - 1][0]))
            if strip:
                db.execute(
                    "UPDATE messages SET images = NULL, image_bytes = 0 WHERE sid = ? AND seq <= ? AND image_bytes > 0",
                    (sid, rows[drop + strip - 1][0]),
                )
            db.execute("UPDATE sessions SET message_count = ? WHERE sid = ?", (len(rows) - drop, sid))

        await self._run_on(owner, session_id, work)

    async def set_system_prompt(self, owner: str, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or remove the system prompt."""

        def work(db: sqlite3.Connection) -> None:
            sid = _touch(db, owner, session_id, now)
            db.execute("UPDATE sessions SET system_prompt = ? WHERE sid = ?", (prompt, sid))

        await self._run_on(owner, session_id, work)

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

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop idle conversations, then the oldest beyond the cap; damaged messages are skipped."""

        def work(db: sqlite3.Connection) -> int:
            with db:
                doomed = db.execute(
                    "SELECT sid, owner, id FROM sessions WHERE last_active < ? UNION ALL "
                    "SELECT * FROM (SELECT sid, owner, id FROM sessions WHERE last_active >= ? "
                    "ORDER BY last_active DESC, id, owner LIMIT -1 OFFSET ?)",
                    (idle_before, idle_before, max_sessions),
                ).fetchall()
                db.executemany("DELETE FROM sessions WHERE sid = ?", [(sid,) for sid, _, _ in doomed])
            _delete_messages(db, {sid: (owner, session_id) for sid, owner, session_id in doomed})
            return len(doomed)

        return await self._run(work, transaction=False)

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


def _statements(script: str) -> Iterable[str]:
    return (statement.strip() for statement in script.split(";") if statement.strip())


def _for_each(db: sqlite3.Connection, sql: str, rows: list[R], damaged: Callable[[R, str], None]) -> int:
    """Run ``sql`` for every row in one transaction; if damaged pages stop it, run it row by row,
    each in its own transaction, so a damaged page costs only its own rows. Return how many rows
    succeeded; ``damaged`` hears of the others.

    Separate transactions, not savepoints: once SQLite met a damaged page in a write, committing
    the rest of that transaction fails too.
    """
    try:
        with db:
            db.executemany(sql, rows)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
    else:
        return len(rows)
    done = 0
    for row in rows:
        try:
            with db:
                db.execute(sql, row)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            damaged(row, str(exc))
        else:
            done += 1
    return done


def _delete_messages(db: sqlite3.Connection, conversations: dict[int, tuple[str, str]]) -> None:
    """Delete the messages of conversations whose rows are already gone (and committed).

    Messages on damaged pages stay where they are, unreachable: their ``sid`` is never used again.
    """

    def damaged(row: tuple[int], error: str) -> None:
        owner, session_id = conversations[row[0]]
        logger.error("session_messages_left_damaged", owner=owner, session=session_id, sid=row[0], error=error)

    _for_each(db, "DELETE FROM messages WHERE sid = ?", [(sid,) for sid in conversations], damaged)


def _touch(db: sqlite3.Connection, owner: str, session_id: str, now: float) -> int:
    """Create the conversation or mark it active; return its ``sid``."""
    row = db.execute("SELECT sid FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)).fetchone()
    if row is not None:
        db.execute("UPDATE sessions SET last_active = ? WHERE sid = ?", (now, row[0]))
        sid: int = row[0]
        return sid
    # Not an upsert: a conflicting INSERT would still use up an AUTOINCREMENT value.
    created = db.execute(
        "INSERT INTO sessions (owner, id, system_prompt, created_at, last_active) VALUES (?, ?, NULL, ?, ?)",
        (owner, session_id, now, now),
    )
    if created.lastrowid is None:
        raise RuntimeError("SQLite did not report the new conversation's sid")
    return created.lastrowid
