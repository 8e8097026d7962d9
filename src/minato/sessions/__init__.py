"""Server-side conversations: model, stores, and the rules that use them."""

from minato.sessions.manager import SessionManager, Turn
from minato.sessions.model import Bounds, Caps, Session, SessionSummary, StoredMessage, validate_session_id
from minato.sessions.sqlite import SqliteStore
from minato.sessions.store import MEMORY_URL, MemoryStore, SessionStore, open_store

__all__ = [
    "MEMORY_URL",
    "Bounds",
    "Caps",
    "MemoryStore",
    "Session",
    "SessionManager",
    "SessionStore",
    "SessionSummary",
    "SqliteStore",
    "StoredMessage",
    "Turn",
    "open_store",
    "validate_session_id",
]
