"""Backpressure: a bound on generations running at once, overall and per model, with a bounded queue.

Beyond the queue a request is refused at once with 503 and ``Retry-After``, so load never piles up
without limit; a request that waits too long is refused the same way. Waiters are served in
arrival order, each as soon as both its model and the whole service have room.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import TYPE_CHECKING

from minato.errors import OverloadedError

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics


class Slot:
    """Permission to run one generation; release it exactly once (extra releases are ignored)."""

    __slots__ = ("_admission", "model")

    def __init__(self, admission: Admission, model: str) -> None:
        self._admission: Admission | None = admission
        self.model = model

    def release(self) -> None:
        """Give the slot back."""
        if self._admission is not None:
            admission, self._admission = self._admission, None
            admission._release(self.model)


class Admission:
    """Counts running generations and queues the ones that must wait."""

    def __init__(
        self, total: int, per_model: int, queue: int, wait_seconds: float, metrics: Metrics | None = None
    ) -> None:
        self.total = total
        self.per_model = per_model
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.metrics = metrics
        self.running = 0
        self._by_model: Counter[str] = Counter()
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()

    def _fits(self, model: str) -> bool:
        return self.running < self.total and (not self.per_model or self._by_model[model] < self.per_model)

    def _take(self, model: str) -> None:
        self.running += 1
        self._by_model[model] += 1

    def try_acquire(self, model: str) -> Slot | None:
        """Take a slot if one is free right now (and nobody is queued before us); else ``None``."""
        if not self._waiters and self._fits(model):
            self._take(model)
            return Slot(self, model)
        return None

    async def acquire(self, model: str) -> Slot:
        """Wait (bounded) for room to run a generation on ``model``."""
        slot = self.try_acquire(model)
        if slot is not None:
            return slot
        if len(self._waiters) >= self.queue:
            self._reject("queue_full")
            raise OverloadedError(f"too many generations waiting ({self.queue}); try again shortly")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (model, waiter)
        self._waiters.append(entry)
        self._report_queue()
        try:
            async with asyncio.timeout(self.wait_seconds):
                await waiter
        except TimeoutError:
            self._abandon(entry)
            self._reject("queue_timeout")
            raise OverloadedError(f"no generation slot within {self.wait_seconds:g} s; try again shortly") from None
        except BaseException:
            self._abandon(entry)
            raise
        return Slot(self, model)

    def _abandon(self, entry: tuple[str, asyncio.Future[None]]) -> None:
        model, waiter = entry
        if waiter.done() and not waiter.cancelled():
            self._release(model)  # granted in the very instant it was given up: hand it straight back
        else:
            waiter.cancel()
            self._waiters.remove(entry)
            self._report_queue()

    def _release(self, model: str) -> None:
        self.running -= 1
        self._by_model[model] -= 1
        if not self._by_model[model]:
            del self._by_model[model]
        # Wake waiters in arrival order, as many as now fit (others keep their place).
        for entry in list(self._waiters):
            waiting_model, waiter = entry
            if waiter.done():
                continue
            if self._fits(waiting_model):
                self._take(waiting_model)
                self._waiters.remove(entry)
                waiter.set_result(None)
        self._report_queue()

    def _report_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiters))

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejections.labels(reason).inc()
