"""A clock the test moves: time stands still until the test advances it, and ``sleep`` ends when its time
comes, not when real time passes. For code that takes a clock and a sleep (the SQLite state's leases,
limits and affinity)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ManualClock"]

#: Real seconds a woken sleeper may take to sleep again (or end): far above what a query takes.
PATIENCE: Final = 10.0


class ManualClock:
    """Time that moves only in :meth:`advance`, and the sleeps that wait for it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None], asyncio.Task[Any] | None]] = []
        self._moved = asyncio.Event()

    def time(self) -> float:
        """The time now."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds``."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, woken, asyncio.current_task()))
        self._moved.set()
        try:
            await woken
        finally:
            self._sleepers = [entry for entry in self._sleepers if entry[1] is not woken]

    def asleep(self, task: asyncio.Future[Any]) -> bool:
        """Whether ``task`` waits in :meth:`sleep` now."""
        return any(sleeper is task for _, _, sleeper in self._sleepers)

    async def until_asleep(self, task: asyncio.Future[Any]) -> None:
        """Wait until ``task`` waits in :meth:`sleep` (or fail after :data:`PATIENCE` real seconds)."""
        await self._until(lambda: self.asleep(task) or task.done())

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, from one sleeper's deadline to the next; each sleeper woken runs
        until it sleeps again or ends before time moves on."""
        end = self.now + seconds
        while True:
            due = [entry for entry in self._sleepers if entry[0] <= end]
            if not due:
                break
            self.now = max(self.now, min(deadline for deadline, _, _ in due))
            woken = [(future, task) for deadline, future, task in due if deadline <= self.now]
            self._sleepers = [entry for entry in self._sleepers if entry[0] > self.now]
            for future, _ in woken:
                future.set_result(None)
            tasks = [task for _, task in woken if task is not None]
            for task in tasks:
                task.add_done_callback(lambda _: self._moved.set())
            await self._until(functools.partial(self._settled, tasks))
        self.now = end

    def _settled(self, tasks: list[asyncio.Task[Any]]) -> bool:
        return all(task.done() or self.asleep(task) for task in tasks)

    async def _until(self, settled: Callable[[], bool]) -> None:
        deadline = time.monotonic() + PATIENCE
        while not settled():
            self._moved.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, "a woken sleeper neither slept again nor ended"
            try:
                await asyncio.wait_for(self._moved.wait(), remaining)
            except TimeoutError:
                continue
