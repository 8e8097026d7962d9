"""The SQLite store's file: its tables, the v1 → v2 migration, rows to messages, damage found at open.

Apart from the store's queries because this is what the *file* is, whichever Minato wrote it: what
a new file is made of, how an older one is brought up to date, and how damaged content is told
from a transient failure and reported, once, at start-up.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, TypeAlias

import msgspec
import structlog

from minato.state.conversations import StoredMessage

logger = structlog.get_logger("minato.sessions")

SCHEMA_VERSION: Final = 3
#: Conversations named in the start-up damage report; the count covers all of them.
DAMAGE_REPORT_LIMIT: Final = 20
#: A conversation's messages, and one more of them, with their values as :func:`message_of` reads
#: them and :func:`message_row` writes them.
SELECT_MESSAGES: Final = (
    "SELECT role, image_bytes, image_count, model, at, content, images FROM messages WHERE sid = ? ORDER BY seq"
)
INSERT_MESSAGE: Final = (
    "INSERT INTO messages (sid, seq, role, image_bytes, image_count, model, at, content, images) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
MessageRow: TypeAlias = tuple[str, int, int, str | None, float, str, bytes | None]
_images_encoder: Final = msgspec.json.Encoder()
_images_decoder: Final = msgspec.json.Decoder(list[str])
# Result codes meaning the file's content is damaged (not a transient lock or I/O failure).
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FORMAT})

# A surrogate ``sid`` (never reused: AUTOINCREMENT) keys the messages, so a conversation created
# again after its predecessor's messages were left on damaged pages never meets those rows. No
# foreign key cascade: messages are deleted explicitly, so damaged message pages cannot block
# deleting the conversation. ``message_count`` spares listings any read of the messages. In
# ``messages`` the small columns come before ``content`` and ``images``, so reading them never
# walks a large row's overflow pages.
#
# ``session_owners`` is what the caps need, kept by triggers so no write can forget it: how many
# conversations each owner holds and its oldest activity, indexed so that the owner holding the most
# (ties: the oldest activity) is one index probe; ``sessions_by_owner_activity`` gives an owner's
# count and its least recently active conversation (ties: the greatest id, as listings end) the same
# way, and its listing read backwards.
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
CREATE INDEX IF NOT EXISTS sessions_by_owner_activity ON sessions (owner, last_active, id DESC);
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
CREATE TABLE IF NOT EXISTS session_owners (
    owner TEXT PRIMARY KEY,
    held INTEGER NOT NULL,
    oldest REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_owners_by_size ON session_owners (held DESC, oldest, owner);
CREATE TRIGGER IF NOT EXISTS session_created AFTER INSERT ON sessions BEGIN
    INSERT INTO session_owners (owner, held, oldest) VALUES (NEW.owner, 1, NEW.last_active)
        ON CONFLICT (owner) DO UPDATE SET held = held + 1, oldest = MIN(oldest, excluded.oldest);
END;
CREATE TRIGGER IF NOT EXISTS session_touched AFTER UPDATE OF last_active ON sessions BEGIN
    UPDATE session_owners SET oldest = (SELECT MIN(last_active) FROM sessions WHERE owner = NEW.owner)
        WHERE owner = NEW.owner;
END;
CREATE TRIGGER IF NOT EXISTS session_forgotten AFTER DELETE ON sessions BEGIN
    DELETE FROM session_owners WHERE owner = OLD.owner AND held <= 1;
    UPDATE session_owners
        SET held = held - 1, oldest = (SELECT MIN(last_active) FROM sessions WHERE owner = OLD.owner)
        WHERE owner = OLD.owner;
END;
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

# v2 → v3: the owners' counts for the caps (the triggers keep them from here on), and the owner index
# with ids in listing order.
_MIGRATE_V2: Final = """
DROP INDEX IF EXISTS sessions_by_owner;
{schema}
INSERT INTO session_owners (owner, held, oldest)
    SELECT owner, COUNT(*), MIN(last_active) FROM sessions GROUP BY owner;
"""


def prepare_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file, or migrate an older one, in one transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path} has session schema v{version}; this Minato knows v{SCHEMA_VERSION} (downgrade?)")
    script = _SCHEMA
    if version == 1:
        db.create_function("minato_image_bytes", 1, _stored_image_bytes, deterministic=True)
        script = _MIGRATE_V1.format(schema=_SCHEMA)
    elif version == 2:
        script = _MIGRATE_V2.format(schema=_SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(script):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if version in {1, 2}:
        count = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
        logger.info(
            "session_store_migrated", path=str(path), from_version=version, to_version=SCHEMA_VERSION, sessions=count
        )


def _statements(script: str) -> Iterable[str]:
    """The script's statements, one at a time (a trigger's body holds semicolons of its own)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip("; \n"):
                yield pending.strip()
            pending = ""


def report_damage(db: sqlite3.Connection, path: Path) -> None:
    """Check the whole file's structure; on damage, find which conversations cannot be read."""
    started = time.perf_counter()
    try:
        problems = [row[0] for row in db.execute("PRAGMA quick_check(100)")]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    seconds = round(time.perf_counter() - started, 3)
    if problems == ["ok"]:
        logger.info("session_store_checked", path=str(path), seconds=seconds)
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
        path=str(path),
        problem_count=len(problems),
        problems=problems[:10],
        damaged_sessions=damaged,
        damaged_session_count=unreadable,
        seconds=seconds,
        hint="GET and turns on a damaged conversation answer 409; DELETE /chat/<id> removes it",
    )


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


def _stored_image_bytes(images: bytes | None) -> int:
    return sum(len(image) for image in _images_decoder.decode(images)) if images else 0


def message_row(message: StoredMessage) -> MessageRow:
    """A message as the values :data:`INSERT_MESSAGE` takes after ``sid`` and ``seq``."""
    images = _images_encoder.encode(message.images) if message.images else None
    return (message.role, message.image_bytes, message.image_count, message.model, message.at, message.content, images)


def message_of(row: MessageRow) -> StoredMessage:
    """A message read back from a row of :data:`SELECT_MESSAGES`."""
    role, _, image_count, model, at, content, images = row
    images_kept = _images_decoder.decode(images) if images else []
    return StoredMessage(role=role, content=content, images=images_kept, image_count=image_count, model=model, at=at)
