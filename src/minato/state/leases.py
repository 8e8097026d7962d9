"""A conversation's turn held across processes through a lease, whichever home keeps the lease.

The orchestration is the same in every shared home, so it is written once here; a home gives only
its three atomic operations on a lease (:class:`LeaseStore`). A process first takes its own lock of
the conversation (its other requests for it wait there, in order, asking the home nothing), then the
lease: taken when absent or expired, else looked at again after 5 ms, doubling up to 100 ms. The
holder renews it every third of its life; a lease whose holder died expires by itself. Releasing
gives the lease back on a task of its own (no request's cancellation reaches it), then lets this
process's next turn go: it takes the lease at once, with no poll.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import structlog

from minato.errors import StateUnavailableError
from minato.state.memory import LocalTurnLocks
from minato.state.protocols import HeldTurn
from minato.tasks import Background

logger = structlog.get_logger("minato.state")

#: How often a process looks again at a lease another one holds: soon at first, then less often.
FIRST_POLL_SECONDS: Final = 0.005
LAST_POLL_SECONDS: Final = 0.1

Sleep = Callable[[float], Awaitable[None]]


class LeaseStore(Protocol):
    """A home's leases: one per conversation ``(owner, session_id)``, held by a random token, each
    expiring ``lease`` seconds after it was taken or last extended (on the home's own clock). Every
    method raises :class:`~minato.errors.StateUnavailableError` when the home cannot answer."""

    async def take(self, key: tuple[str, str], token: str) -> bool:
        """Take the lease if it is free or expired; ``True`` also when ``token`` holds it already (a
        call sent again after its connection broke)."""
        ...

    async def extend(self, key: tuple[str, str], token: str) -> bool:
        """Extend the lease if ``token`` still holds it; ``False`` if it was lost."""
        ...

    async def delete(self, key: tuple[str, str], token: str) -> None:
        """Delete the lease if ``token`` still holds it (never another holder's)."""
        ...


class _Held:
    """A turn held by this process: the lease (renewed until released) and this process's own lock."""

    __slots__ = ("_key", "_leases", "_local", "_renewal", "_token")

    def __init__(self, leases: Leases, key: tuple[str, str], token: str, local: HeldTurn) -> None:
        self._leases = leases
        self._key = key
        self._token = token
        self._local: HeldTurn | None = local
        self._renewal = leases.renew(key, token)

    def release(self) -> None:
        """Stop renewing and give the lease back, on a task of its own (idempotent, never blocks)."""
        if self._local is not None:
            local, self._local = self._local, None
            self._renewal.cancel()
            self._leases.give_back(self._key, self._token, local)


class Leases:
    """One turn at a time per conversation, across the processes sharing ``store`` (a :class:`TurnLocks`).

    ``sleep`` is what the waits between polls and renewals await (tests pass a clock of their own);
    :meth:`close` waits up to ``closing`` seconds (``None``: as long as it takes) for the leases being
    given back.
    """

    def __init__(
        self, store: LeaseStore, lease: float, *, sleep: Sleep = asyncio.sleep, closing: float | None = None
    ) -> None:
        self._store = store
        self._lease = lease
        self._sleep = sleep
        self._closing = closing
        self._local = LocalTurnLocks()
        # Tasks held here until done: renewals (each its holding's to cancel), and leases being given back.
        self._renewals = Background("turn_lease_task_failed")
        self._pending = Background("turn_lease_task_failed")

    async def acquire(self, owner: str, session_id: str) -> HeldTurn:
        """Wait for the conversation's turn in this process, then for its lease; hold both. Cancellable
        while it waits; raises :class:`~minato.errors.StateUnavailableError` (nothing stays held)."""
        local = await self._local.acquire(owner, session_id)
        key = (owner, session_id)
        token = secrets.token_hex(16)
        try:
            delay = FIRST_POLL_SECONDS
            while not await self._store.take(key, token):
                await self._sleep(delay)
                delay = min(delay * 2, LAST_POLL_SECONDS)
        except BaseException:
            # A take may have got through though its answer was lost (cancelled, timed out): give it back.
            self._pending.start(self._delete(key, token))
            local.release()
            raise
        return _Held(self, key, token, local)

    def renew(self, key: tuple[str, str], token: str) -> asyncio.Task[None]:
        """Renew a lease just taken, on a task of its own, until it is cancelled."""
        return self._renewals.start(self._renew(key, token))

    def give_back(self, key: tuple[str, str], token: str, local: HeldTurn) -> None:
        """Delete the lease (if it is still ``token``'s), then let this process's next turn go."""
        self._pending.start(self._give_back(key, token, local))

    async def close(self) -> None:
        """Stop renewing (a lease still held then expires by itself); let the leases being given back go."""
        await self._renewals.aclose()
        await self._pending.wait(self._closing)

    async def _renew(self, key: tuple[str, str], token: str) -> None:
        while True:
            await self._sleep(self._lease / 3)
            try:
                held = await self._store.extend(key, token)
            except StateUnavailableError:  # the lease lives on until it expires: try again
                logger.warning("turn_lease_not_renewed", owner=key[0], session=key[1], lease=self._lease)
                continue
            if not held:
                # It expired before this renewal (a stalled process): another turn may run alongside this one.
                logger.error("turn_lease_lost", owner=key[0], session=key[1], lease=self._lease)
                return

    async def _give_back(self, key: tuple[str, str], token: str, local: HeldTurn) -> None:
        try:
            await self._delete(key, token)
        finally:
            local.release()

    async def _delete(self, key: tuple[str, str], token: str) -> None:
        try:
            await self._store.delete(key, token)
        except StateUnavailableError:  # the lease expires by itself
            logger.warning("turn_lease_not_released", owner=key[0], session=key[1], lease=self._lease)


__all__ = ["FIRST_POLL_SECONDS", "LAST_POLL_SECONDS", "LeaseStore", "Leases", "Sleep"]
