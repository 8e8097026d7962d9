"""The state the workers of one machine share without Redis, all in the SQLite file of the conversations."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from minato.state.protocols import SharedState
from minato.state.sqlite.limits import SqliteAffinity, SqliteHealth, SqliteQuota, SqliteRateLimiter
from minato.state.sqlite.places import sqlite_places
from minato.state.sqlite.tables import BUSY_TIMEOUT_SECONDS, Tables
from minato.state.sqlite.turns import sqlite_turns

if TYPE_CHECKING:
    from minato.settings import Settings
    from minato.state.leases import Sleep
    from minato.state.protocols import SessionStore, UsageLedger


class SqliteState:
    """The state of the workers sharing one SQLite file: turn leases, keys' places, rate limits, quotas, affinity.

    ``clock`` (the wall clock, which every worker of the machine shares) and ``sleep`` are for tests.
    """

    def __init__(
        self,
        path: Path,
        settings: Settings,
        *,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Sleep | None = None,
    ) -> None:
        self._tables = Tables(path, busy_timeout, clock)
        self.turns = sqlite_turns(self._tables, settings.turn_lease, sleep)
        self.concurrency = sqlite_places(self._tables, settings.turn_lease, sleep)
        self.limiter = SqliteRateLimiter(self._tables)
        self.quota = SqliteQuota(self._tables)
        self.affinity = SqliteAffinity(self._tables, settings.max_sessions, settings.session_ttl)
        self.health = SqliteHealth(self._tables)

    async def open(self) -> None:
        """Connect to the file and create the state's tables if they are missing."""
        await self._tables.open()

    async def close(self) -> None:
        """Finish giving leases and places back, then close the connection."""
        await self.turns.close()
        await self.concurrency.close()
        await self._tables.close()

    def shared(self, store: SessionStore, usage: UsageLedger) -> SharedState:
        """Everything a runtime uses: this state, ``store`` for the conversations and ``usage``."""
        return SharedState(
            store=store,
            turns=self.turns,
            limiter=self.limiter,
            quota=self.quota,
            affinity=self.affinity,
            health=self.health,
            concurrency=self.concurrency,
            usage=usage,
        )


@asynccontextmanager
async def open_sqlite_state(
    path: Path, store: SessionStore, settings: Settings, usage: UsageLedger
) -> AsyncIterator[SharedState]:
    """The workers' shared state in the file at ``path``, with ``store`` (an opened store of that file)
    and ``usage`` (the usage ledger of that file)."""
    state = SqliteState(path, settings)
    await state.open()
    try:
        yield state.shared(store, usage)
    finally:
        await state.close()


__all__ = ["SqliteState", "open_sqlite_state"]
