"""asyncio helpers every layer uses: stopping a background task, holding background tasks until they
end, and sharing one call among concurrent callers. A leaf: it imports nothing of Minato's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

import structlog

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
logger = structlog.get_logger("minato.tasks")


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (if there is one) and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Background:
    """Background tasks held until they end (the loop keeps only weak references to tasks); a task
    that fails is logged, and :meth:`aclose` stops those still running."""

    def __init__(self, failed_event: str) -> None:
        self._failed_event = failed_event
        self._tasks: set[asyncio.Task[Any]] = set()

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold ``task`` until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task of its own, held until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self.keep(task)
        return task

    async def wait(self, seconds: float | None = None) -> None:
        """Let the tasks still running end, for up to ``seconds`` (``None``: as long as they take)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=seconds)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(self._failed_event, task=task.get_name(), error=repr(task.exception()))

    async def aclose(self) -> None:
        """Stop every task still running, and wait until each has."""
        for task in list(self._tasks):
            await cancel_and_wait(task)


class SingleFlight(Generic[K, V]):
    """At most one call in flight per key: whoever asks for a key while its call runs waits for that
    call's outcome instead of making another.

    The call runs as its own task, so a caller that goes away (cancelled) stops neither the call nor
    the others waiting for it; every waiter gets the same result, or the same exception.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._running: dict[K, asyncio.Task[V]] = {}

    def pending(self, key: K) -> bool:
        """Whether a call for ``key`` is in flight."""
        return key in self._running

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """The outcome of ``call()``, or of the call for ``key`` already in flight."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(_awaited(call), name=f"{self._name}-{key}")
            self._running[key] = task
            task.add_done_callback(lambda done: self._ended(key, done))
        return await asyncio.shield(task)

    def _ended(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter re-raises it, and none may be left to

    async def aclose(self) -> None:
        """Stop the calls in flight (at shutdown)."""
        for task in list(self._running.values()):
            await cancel_and_wait(task)


async def _awaited(call: Callable[[], Awaitable[V]]) -> V:
    return await call()


__all__ = ["Background", "SingleFlight", "cancel_and_wait"]
