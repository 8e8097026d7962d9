"""A bound per key on the generations it runs at once, across the processes sharing a home.

Each generation of a bounded key holds one of the key's places in the home: a lease (the one lease
holder, :class:`~minato.state.leases.LeaseHolder`) with room for the key's bound, where a conversation's
turn has room for one. A request first waits its turn in this process
(:class:`~minato.state.concurrency.LocalKeyConcurrency`: no more of the key's requests than its bound,
first come first served), then this process's requests of the key ask the home one at a time, in
arrival order: the first takes a place when the home has room, else looks again after 5 ms, doubling up
to 100 ms. A place is renewed every third of its life (``MINATO_TURN_LEASE``), given back on a task of
its own when the generation ends, and expires by itself when its process died. A home gives its places
as a :class:`PlaceStore`; every failure of it is :class:`~minato.errors.StateUnavailableError`, and a
request that cannot take its place never runs.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple, Protocol

from minato.state.concurrency import LocalKeyConcurrency
from minato.state.leases import LeaseHolder, LeaseStore, Sleep
from minato.state.memory import LocalTurnLocks
from minato.state.protocols import HeldTurn


class KeyBound(NamedTuple):
    """The places of ``key``: ``limit`` of them (the key's bound when the place is taken)."""

    key: str
    limit: int


class PlaceStore(LeaseStore[KeyBound], Protocol):
    """A home's places: per key, one lease per running generation, each held by a random token. ``take``
    takes one when fewer than the bound's ``limit`` are live; ``extend`` and ``delete`` touch only
    ``token``'s own place."""

    async def running(self, key: str) -> int:
        """How many of ``key``'s places are live now."""
        ...


def _about(bound: KeyBound) -> dict[str, str]:
    return {"key": bound.key}


class SharedKeyConcurrency(LeaseHolder[KeyBound]):
    """The places each key holds across the processes sharing ``store`` (a
    :class:`~minato.state.protocols.KeyConcurrency`); see :class:`~minato.state.leases.LeaseHolder` for
    ``sleep`` and ``closing``."""

    def __init__(
        self, store: PlaceStore, lease: float, *, sleep: Sleep = asyncio.sleep, closing: float | None = None
    ) -> None:
        super().__init__(store, lease, "key_place", _about, sleep=sleep, closing=closing)
        self._places = store
        self._local = LocalKeyConcurrency()
        # One request per key asks the home at a time, so the process's own requests get places in order.
        self._asking = LocalTurnLocks()

    async def acquire(self, key: str, limit: int) -> HeldTurn:
        """Wait until ``key`` runs fewer than ``limit`` generations here and in the home (its requests in
        this process in arrival order), then hold one place until released. Cancellable while it waits;
        raises :class:`~minato.errors.StateUnavailableError`; either way nothing stays held."""
        local = await self._local.acquire(key, limit)
        try:
            asking = await self._asking.acquire("", key)
        except BaseException:
            local.release()
            raise
        try:
            return await self.hold(KeyBound(key, limit), local)
        finally:
            asking.release()

    async def running(self, key: str) -> int:
        """How many places ``key`` holds now, across the processes sharing the home."""
        return await self._places.running(key)


__all__ = ["KeyBound", "PlaceStore", "SharedKeyConcurrency"]
