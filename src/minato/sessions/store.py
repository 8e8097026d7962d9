"""Where conversations live: one small interface, an in-memory store and a SQLite store.

A shared store for several Minato replicas (Redis) would be one more class with these methods;
nothing above this module knows which store it talks to.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Protocol, TypeVar

import msgspec

from minato.sessions.model import Session, SessionSummary, StoredMessage, trim_plan

T = TypeVar("T")
MEMORY_URL: Final = "memory://"
SCHEMA_VERSION: Final = 1
_images_encoder: Final = msgspec.json.Encoder()
_images_decoder: Final = msgspec.json.Decoder(list[str])


class SessionStore(Protocol):
    """Persistence of conversations. Every method is safe to call from the event loop."""

    async def open(self) -> None:
        """Prepare the store (create files, schema)."""

    async def close(self) -> None:
        """Release the store's resources."""

    async def get(self, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""

    async def append(
        self, session_id: str, messages: list[StoredMessage], *, max_messages: int, image_budget: int, now: float
    ) -> None:
        """Add messages to a conversation (creating it), then trim it to its bounds."""

    async def set_system_prompt(self, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or (with ``None``) remove a conversation's system prompt, creating it if needed."""

    async def delete(self, session_id: str) -> None:
        """Forget a conversation (idempotent)."""

    async def list(self, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of conversations, most recently active first, and the total count."""

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop conversations idle since before ``idle_before``, then the least recently active
        beyond ``max_sessions``; return how many were dropped."""


def open_store(url: str) -> SessionStore:
    """Return the store a ``MINATO_SESSION_STORE`` value names."""
    if url == MEMORY_URL:
        return MemoryStore()
    return SqliteStore(Path(url.removeprefix("sqlite://")))


class MemoryStore:
    """Conversations in a dict: fast, and gone with the process."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def open(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Forget everything."""
        self._sessions.clear()

    async def get(self, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""
        return self._sessions.get(session_id)

    async def append(
        self, session_id: str, messages: list[StoredMessage], *, max_messages: int, image_budget: int, now: float
    ) -> None:
        """Add messages, then trim."""
        current = self._sessions.get(session_id) or Session(
            id=session_id, system_prompt=None, messages=[], created_at=now, last_active=now
        )
        combined = [*current.messages, *messages]
        drop, strip = trim_plan([m.image_bytes for m in combined], max_messages, image_budget)
        kept = combined[drop:]
        kept[:strip] = [msgspec.structs.replace(message, images=[]) for message in kept[:strip]]
        self._sessions[session_id] = msgspec.structs.replace(current, messages=kept, last_active=now)

    async def set_system_prompt(self, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or remove the system prompt."""
        current = self._sessions.get(session_id) or Session(
            id=session_id, system_prompt=None, messages=[], created_at=now, last_active=now
        )
        self._sessions[session_id] = msgspec.structs.replace(current, system_prompt=prompt, last_active=now)

    async def delete(self, session_id: str) -> None:
        """Forget a conversation."""
        self._sessions.pop(session_id, None)

    async def list(self, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of conversations."""
        ordered = sorted(self._sessions.values(), key=lambda s: (-s.last_active, s.id))
        page = [SessionSummary(id=s.id, message_count=len(s.messages), last_active=s.last_active) for s in ordered]
        return page[offset : offset + limit], len(ordered)

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop idle conversations, then the oldest beyond the cap."""
        doomed = {sid for sid, s in self._sessions.items() if s.last_active < idle_before}
        alive = sorted((s for s in self._sessions.values() if s.id not in doomed), key=lambda s: -s.last_active)
        doomed.update(s.id for s in alive[max_sessions:])
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    system_prompt TEXT,
    created_at REAL NOT NULL,
    last_active REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (last_active);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    images BLOB,
    image_count INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""


class SqliteStore:
    """Conversations in an embedded SQLite database (WAL mode), on a thread of its own.

    Every query runs on one dedicated thread, so the event loop never waits on the disk and
    token relay never waits on a commit. Commits are ``synchronous=FULL``: a turn that was
    recorded survives a ``kill -9`` and a power cut.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minato-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            db = self._db
            if db is None:
                raise RuntimeError("session store used before open()")
            with db:  # one transaction: commit on success, roll back on error
                return work(db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        """Create the database file and schema on first start; check the schema version."""

        def connect() -> sqlite3.Connection:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise RuntimeError(
                    f"{self.path} has session schema v{version}; this Minato knows v{SCHEMA_VERSION} (downgrade?)"
                )
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            db.isolation_level = "DEFERRED"
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        """Close the database and its thread."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def get(self, session_id: str) -> Session | None:
        """Return a conversation, or ``None``."""

        def work(db: sqlite3.Connection) -> Session | None:
            row = db.execute(
                "SELECT system_prompt, created_at, last_active FROM sessions WHERE id = ?", (session_id,)
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
                    "SELECT role, content, images, image_count, model, at FROM messages "
                    "WHERE session_id = ? ORDER BY seq",
                    (session_id,),
                )
            ]
            return Session(
                id=session_id, system_prompt=row[0], messages=messages, created_at=row[1], last_active=row[2]
            )

        return await self._run(work)

    async def append(
        self, session_id: str, messages: list[StoredMessage], *, max_messages: int, image_budget: int, now: float
    ) -> None:
        """Add messages and trim, in one transaction."""

        def work(db: sqlite3.Connection) -> None:
            _touch(db, session_id, now)
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE session_id = ?", (session_id,))
            seq = last.fetchone()[0]
            db.executemany(
                "INSERT INTO messages (session_id, seq, role, content, images, image_count, model, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        session_id,
                        seq + offset,
                        m.role,
                        m.content,
                        _images_encoder.encode(m.images) if m.images else None,
                        m.image_count,
                        m.model,
                        m.at,
                    )
                    for offset, m in enumerate(messages, start=1)
                ],
            )
            rows = db.execute(
                "SELECT seq, COALESCE(LENGTH(images), 0) FROM messages WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
            drop, strip = trim_plan([size for _, size in rows], max_messages, image_budget)
            if drop:
                db.execute("DELETE FROM messages WHERE session_id = ? AND seq <= ?", (session_id, rows[drop - 1][0]))
            if strip:
                db.execute(
                    "UPDATE messages SET images = NULL WHERE session_id = ? AND seq <= ?",
                    (session_id, rows[drop + strip - 1][0]),
                )

        await self._run(work)

    async def set_system_prompt(self, session_id: str, prompt: str | None, *, now: float) -> None:
        """Set or remove the system prompt."""

        def work(db: sqlite3.Connection) -> None:
            _touch(db, session_id, now)
            db.execute("UPDATE sessions SET system_prompt = ? WHERE id = ?", (prompt, session_id))

        await self._run(work)

    async def delete(self, session_id: str) -> None:
        """Forget a conversation (its messages go with it)."""
        await self._run(lambda db: db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)))

    async def list(self, offset: int, limit: int) -> tuple[list[SessionSummary], int]:
        """Return a page of conversations."""

        def work(db: sqlite3.Connection) -> tuple[list[SessionSummary], int]:
            total = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            rows = db.execute(
                "SELECT s.id, s.last_active, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) "
                "FROM sessions s ORDER BY s.last_active DESC, s.id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            return [SessionSummary(id=i, message_count=n, last_active=t) for i, t, n in rows], total

        return await self._run(work)

    async def expire(self, idle_before: float, max_sessions: int) -> int:
        """Drop idle conversations, then the oldest beyond the cap."""

        def work(db: sqlite3.Connection) -> int:
            idle = db.execute("DELETE FROM sessions WHERE last_active < ?", (idle_before,)).rowcount
            over = db.execute(
                "DELETE FROM sessions WHERE id IN "
                "(SELECT id FROM sessions ORDER BY last_active DESC, id LIMIT -1 OFFSET ?)",
                (max_sessions,),
            ).rowcount
            return int(idle + over)

        return await self._run(work)


def _touch(db: sqlite3.Connection, session_id: str, now: float) -> None:
    db.execute(
        "INSERT INTO sessions (id, system_prompt, created_at, last_active) VALUES (?, NULL, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET last_active = excluded.last_active",
        (session_id, now, now),
    )
