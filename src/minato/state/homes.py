"""Which home the state lives in: :func:`open_state` picks the one the settings call for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from minato.errors import SettingsError
from minato.state.memory import MemoryStore, local_state
from minato.state.protocols import SessionStore, SharedState
from minato.state.sqlite.conversations import SqliteStore
from minato.state.sqlite.home import open_sqlite_state
from minato.state.sqlite.usage import open_sqlite_usage

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics
    from minato.settings import Settings

MEMORY_URL: Final = "memory://"


def open_store(url: str) -> SessionStore:
    """Return the store a ``MINATO_SESSION_STORE`` value names."""
    if url == MEMORY_URL:
        return MemoryStore()
    return SqliteStore(Path(url.removeprefix("sqlite://")))


def refuse_unshared_workers(settings: Settings, workers: int) -> str | None:
    """Why ``workers`` processes must not serve with these settings (``None``: they may)."""
    if workers <= 1 or settings.redis_url or settings.session_store != MEMORY_URL:
        return None
    return (
        f"refusing to start {workers} workers with MINATO_SESSION_STORE=memory:// and no MINATO_REDIS_URL: each "
        "worker would keep its own conversations, turns and rate limits, so a conversation would lose its "
        "history and a key would get a limit per worker. Use a SQLite file (MINATO_SESSION_STORE=minato.db, "
        "the default) or MINATO_REDIS_URL, or a single worker."
    )


@asynccontextmanager
async def open_state(settings: Settings, metrics: Metrics) -> AsyncIterator[SharedState]:
    """Open the state the settings call for, its store of conversations opened too; close it all when
    the block ends.

    ``MINATO_REDIS_URL`` set: Redis (replicas on several machines). Else, with more than one worker:
    the SQLite file of the conversations (the workers of one machine). Else: this process's memory,
    with the conversations in the store ``MINATO_SESSION_STORE`` names. The usage ledger is kept in that
    store's SQLite file even by a single worker (it must survive a restart); only with
    ``MINATO_SESSION_STORE=memory://`` is it in memory.
    """
    if settings.redis_url:
        # Imported only here: redis-py is loaded only by a deployment that uses it.
        from minato.state.redis.home import open_redis_state

        async with open_redis_state(settings, metrics) as state:
            yield state
        return
    refusal = refuse_unshared_workers(settings, settings.workers)
    if refusal:
        raise SettingsError(refusal)
    store = open_store(settings.session_store)
    await store.open()
    try:
        if isinstance(store, SqliteStore):
            async with open_sqlite_usage(store.path, failed=metrics.usage_unwritten.inc) as usage:
                if settings.workers > 1:
                    async with open_sqlite_state(store.path, store, settings, usage) as state:
                        yield state
                else:
                    yield local_state(store, settings, usage)
        else:
            yield local_state(store, settings)
    finally:
        await store.close()


__all__ = [
    "MEMORY_URL",
    "open_state",
    "open_store",
    "refuse_unshared_workers",
]
