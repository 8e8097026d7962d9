"""A bound per key on the generations it runs at once (``max_concurrent``): this process's part.

A key at its bound waits here, first come first served among its own requests, before it asks for a
generation slot, so it never holds a slot while its key is at its bound. The homes shared by several
processes keep the count across them; in one process a count per key is all it takes.
"""

from __future__ import annotations

import asyncio
from collections import deque

from minato.state.protocols import HeldTurn


class _Place:
    """One place held by a key; releasing it twice releases it once."""

    __slots__ = ("_bound", "_key")

    def __init__(self, bound: LocalKeyConcurrency, key: str) -> None:
        self._bound: LocalKeyConcurrency | None = bound
        self._key = key

    def release(self) -> None:
        """Give the place back, to the key's next waiting request if there is one."""
        if self._bound is not None:
            bound, self._bound = self._bound, None
            bound.give_back(self._key)


class LocalKeyConcurrency:
    """The places each key holds in this process, and its requests waiting for one, in order."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, key: str, limit: int) -> HeldTurn:
        """Wait until ``key`` runs fewer than ``limit`` generations and none of its earlier requests
        waits, then hold one place. Cancellable while it waits (nothing stays held)."""
        waiting = self._waiting.get(key)
        if not waiting and self._running.get(key, 0) < limit:
            self._running[key] = self._running.get(key, 0) + 1
            return _Place(self, key)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back(key)  # granted in the very instant it was given up: pass it on
            else:
                self._forget(key, waiter)
            raise
        return _Place(self, key)

    async def running(self, key: str) -> int:
        """How many places ``key`` holds now."""
        return self._running.get(key, 0)

    def give_back(self, key: str) -> None:
        """One of ``key``'s places is free: the next waiting request of the key takes it."""
        waiting = self._waiting.get(key)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                if not waiting:
                    del self._waiting[key]
                waiter.set_result(None)  # the place passes on: the count stays
                return
        self._waiting.pop(key, None)
        left = self._running.get(key, 0) - 1
        if left > 0:
            self._running[key] = left
        else:
            self._running.pop(key, None)

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            return
        # Cancelling the task cancels its future at once, but this runs only when the task resumes:
        # a give_back in between may already have dropped the cancelled future from the line.
        if waiter in waiting:
            waiting.remove(waiter)
        if not waiting:
            del self._waiting[key]


__all__ = ["LocalKeyConcurrency"]
