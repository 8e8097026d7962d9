"""Leases held across processes, whichever home keeps them: a conversation's turn, a key's places.

The orchestration is the same in every shared home and for every kind of lease, so it is written once
here (:class:`LeaseHolder`); a home gives only its three atomic operations on a lease
(:class:`LeaseStore`). A process first takes its own hold of what the lease guards (its other requests
for it wait there, in order, asking the home nothing), then the lease: taken when there is room, else
looked at again after 5 ms, doubling up to 100 ms. The holder renews it every third of its life; a lease
whose holder died expires by itself. Releasing gives the lease back on a task of its own (no request's
cancellation reaches it), then lets this process's next request go: it takes the lease at once, with no
poll.

A conversation's turn (:class:`Leases`) is a lease of room one: one turn at a time. A key's places
(:mod:`minato.state.places`) are the same lease with room for the key's bound.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Final, Generic, Protocol, TypeVar

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
K = TypeVar("K")
K_contra = TypeVar("K_contra", contravariant=True)
#: What the logs say of a lease (``<what>_lost``, ...): lost while held, not renewed, not given back.
_EVENTS: Final = ("lost", "not_renewed", "not_released")


class LeaseStore(Protocol[K_contra]):
    """A home's leases, each named by a ``key`` and held by a random token, each expiring ``lease``
    seconds after it was taken or last extended (on the home's own clock). Every method raises
    :class:`~minato.errors.StateUnavailableError` when the home cannot answer."""

    async def take(self, key: K_contra, token: str) -> bool:
        """Take the lease if there is room (its expired holders do not count); ``True`` also when ``token``
        holds it already (a call sent again after its connection broke)."""
        ...

    async def extend(self, key: K_contra, token: str) -> bool:
        """Extend the lease if ``token`` still holds it; ``False`` if it was lost."""
        ...

    async def delete(self, key: K_contra, token: str) -> None:
        """Delete the lease if ``token`` still holds it (never another holder's)."""
        ...


class _Held(Generic[K]):
    """A lease held by this process (renewed until released), and this process's own hold of it."""

    __slots__ = ("_holder", "_key", "_local", "_renewal", "_token")

    def __init__(self, holder: LeaseHolder[K], key: K, token: str, local: HeldTurn) -> None:
        self._holder = holder
        self._key = key
        self._token = token
        self._local: HeldTurn | None = local
        self._renewal = holder.renew(key, token)

    def release(self) -> None:
        """Stop renewing and give the lease back, on a task of its own (idempotent, never blocks)."""
        if self._local is not None:
            local, self._local = self._local, None
            self._renewal.cancel()
            self._holder.give_back(self._key, self._token, local)


class LeaseHolder(Generic[K]):
    """The leases of ``store`` this process holds: polled for, renewed, given back.

    ``what`` names them in the logs (``<what>_lost``, ``<what>_not_renewed``, ``<what>_not_released``,
    ``<what>_task_failed``) and ``about`` gives a log line's fields for a lease's key. ``sleep`` is what the
    waits between polls and renewals await (tests pass a clock of their own); :meth:`close` waits up to
    ``closing`` seconds (``None``: as long as it takes) for the leases being given back.
    """

    def __init__(
        self,
        store: LeaseStore[K],
        lease: float,
        what: str,
        about: Callable[[K], dict[str, str]],
        *,
        sleep: Sleep = asyncio.sleep,
        closing: float | None = None,
    ) -> None:
        self._store = store
        self._lost, self._not_renewed, self._not_released = (f"{what}_{event}" for event in _EVENTS)
        self._about = about
        self._lease = lease
        self._sleep = sleep
        self._closing = closing
        # Tasks held here until done: renewals (each its holding's to cancel), and leases being given back.
        self._renewals = Background(f"{what}_task_failed")
        self._pending = Background(f"{what}_task_failed")

    async def hold(self, key: K, local: HeldTurn) -> HeldTurn:
        """Wait for the lease ``key`` while holding ``local`` (this process's own hold of it), then hold both
        until released. Cancellable while it waits; raises :class:`~minato.errors.StateUnavailableError`;
        either way ``local`` is released and nothing stays held."""
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

    def renew(self, key: K, token: str) -> asyncio.Task[None]:
        """Renew a lease just taken, on a task of its own, until it is cancelled."""
        return self._renewals.start(self._renew(key, token))

    def give_back(self, key: K, token: str, local: HeldTurn) -> None:
        """Delete the lease (if it is still ``token``'s), then let this process's next request go."""
        self._pending.start(self._give_back(key, token, local))

    async def close(self) -> None:
        """Stop renewing (a lease still held then expires by itself); let the leases being given back go."""
        await self._renewals.aclose()
        await self._pending.wait(self._closing)

    async def _renew(self, key: K, token: str) -> None:
        while True:
            await self._sleep(self._lease / 3)
            try:
                held = await self._store.extend(key, token)
            except StateUnavailableError:  # the lease lives on until it expires: try again
                logger.warning(self._not_renewed, **self._about(key), lease=self._lease)
                continue
            if not held:
                # It expired before this renewal (a stalled process): another holder may run alongside this one.
                logger.error(self._lost, **self._about(key), lease=self._lease)
                return

    async def _give_back(self, key: K, token: str, local: HeldTurn) -> None:
        try:
            await self._delete(key, token)
        finally:
            local.release()

    async def _delete(self, key: K, token: str) -> None:
        try:
            await self._store.delete(key, token)
        except StateUnavailableError:  # the lease expires by itself
            logger.warning(self._not_released, **self._about(key), lease=self._lease)


def _conversation(key: tuple[str, str]) -> dict[str, str]:
    return {"owner": key[0], "session": key[1]}


class Leases(LeaseHolder[tuple[str, str]]):
    """One turn at a time per conversation ``(owner, session_id)``, across the processes sharing ``store``
    (a :class:`~minato.state.protocols.TurnLocks`): a lease of room one per conversation."""

    def __init__(
        self,
        store: LeaseStore[tuple[str, str]],
        lease: float,
        *,
        sleep: Sleep = asyncio.sleep,
        closing: float | None = None,
    ) -> None:
        super().__init__(store, lease, "turn_lease", _conversation, sleep=sleep, closing=closing)
        self._local = LocalTurnLocks()

    async def acquire(self, owner: str, session_id: str) -> HeldTurn:
        """Wait for the conversation's turn in this process, then for its lease; hold both. Cancellable
        while it waits; raises :class:`~minato.errors.StateUnavailableError` (nothing stays held)."""
        local = await self._local.acquire(owner, session_id)
        return await self.hold((owner, session_id), local)


__all__ = ["FIRST_POLL_SECONDS", "LAST_POLL_SECONDS", "LeaseHolder", "LeaseStore", "Leases", "Sleep"]
