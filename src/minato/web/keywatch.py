"""Keys without a restart: each process reads its keys files again when they change on disk (it looks
every second) and at once on ``SIGHUP`` (see :mod:`minato.server.serving`).

A reload swaps the keyring's keys in one assignment, so requests in flight keep the caller they were
identified as, and no request waits for it. A file that does not parse, or that would leave no key
where keys were in force, is logged and changes nothing: a keyed Minato never opens up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final

import structlog

from minato.auth.keyring import Keyring, Reload
from minato.core.policy import Policy
from minato.observability.metrics import Metrics
from minato.tasks import cancel_and_wait

logger = structlog.get_logger("minato.security")

#: How often each process looks at its keys files (a ``stat`` each): a change is in force within it.
LOOK_EVERY: Final = 1.0
#: Names a ``keys_reloaded`` line lists at most (the counts are always whole).
NAMES_SHOWN: Final = 20


class KeyWatch:
    """Reloads one process's keyring when its files change, or when told to (``SIGHUP``)."""

    def __init__(self, keyring: Keyring, policy: Policy, metrics: Metrics, interval: float = LOOK_EVERY) -> None:
        self.keyring = keyring
        self.policy = policy
        self.metrics = metrics
        self.interval = interval
        self._asked: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ask(self) -> None:
        """Reload now (a ``SIGHUP``); safe to call from a signal handler or another thread."""
        loop, asked = self._loop, self._asked
        if loop is not None and asked is not None:
            loop.call_soon_threadsafe(asked.set)

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Watch for the duration of the block (the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._asked = asyncio.Event()
        task = asyncio.create_task(self._forever(self._asked), name="minato-keys-watch")
        try:
            yield
        finally:
            self._loop = None
            await cancel_and_wait(task)

    async def _forever(self, asked: asyncio.Event) -> None:
        # Without a keys file there is nothing to look at: only a SIGHUP wakes it (and changes nothing).
        interval = self.interval if self.keyring.files else None
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(asked.wait(), interval)
            if asked.is_set():
                asked.clear()
                await self.reload("SIGHUP")
            elif self.keyring.changed():
                await self.reload("changed on disk")

    async def reload(self, why: str) -> Reload:
        """Read the keys files again (in a thread: a thousand keys take milliseconds, but they are not
        the loop's), and report what changed."""
        try:
            outcome = await asyncio.to_thread(self.keyring.reload)
        except Exception:  # never the end of the watch: the keys in force stay
            logger.exception("keys_reload_failed", why=why)
            self.metrics.keys_reloads.labels("refused").inc()
            return Reload(refused="unexpected error", keys=len(self.keyring.callers))
        if outcome.refused is not None:
            logger.warning("keys_reload_refused", why=why, reason=outcome.refused, keys=outcome.keys)
            self.metrics.keys_reloads.labels("refused").inc()
            return outcome
        # A keyless deployment that has just been given keys requires them from now on (the guard
        # reads the keyring per request); reports follow (the policy's viewer).
        self.policy.keyed = self.keyring.enabled
        logger.info(
            "keys_reloaded",
            why=why,
            keys=outcome.keys,
            added=len(outcome.added),
            removed=len(outcome.removed),
            changed=len(outcome.changed),
            added_names=list(outcome.added[:NAMES_SHOWN]),
            removed_names=list(outcome.removed[:NAMES_SHOWN]),
        )
        self.metrics.keys_reloads.labels("ok").inc()
        return outcome


__all__ = ["LOOK_EVERY", "KeyWatch"]
