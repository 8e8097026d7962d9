"""Backpressure: a bound on generations running at once (overall, per model, per key), with a bounded
queue served fairly across keys.

Beyond the queue a request is refused at once with 503 and ``Retry-After``, so load never piles up
without limit; a request that waits too long is refused the same way. The next free slot goes to
the key whose turn it is (:mod:`minato.core.fairqueue`: weighted, first come first served within one
key). A key with a ``max_concurrent`` bound first holds one of its key's places (the state home's
:class:`~minato.state.protocols.KeyConcurrency`, across processes), then waits for a slot: it never
holds a slot while its key is at its bound, and while it waits for the place it counts as waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

from minato.auth.caller import ANONYMOUS, Caller
from minato.core.fairqueue import FairQueue, Waiter
from minato.errors import OverloadedError

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics
    from minato.observability.record import RequestRecord
    from minato.state.protocols import HeldTurn, KeyConcurrency


class Slot:
    """Permission to run one generation; release it exactly once (extra releases are ignored).
    Releasing it gives back the slot and, if it holds one, its key's place."""

    __slots__ = ("_admission", "caller", "model", "place", "record", "since")

    def __init__(
        self,
        admission: Admission,
        model: str,
        caller: Caller,
        record: RequestRecord | None,
        since: float,
        place: HeldTurn | None = None,
    ) -> None:
        self._admission: Admission | None = admission
        self.model = model
        self.caller = caller
        self.record = record
        self.since = since
        """``perf_counter()`` when it began to run."""
        self.place = place

    def release(self) -> None:
        """Give the slot back (to the key whose turn it is), then the key's place."""
        if self._admission is not None:
            admission, self._admission = self._admission, None
            admission._release(self)
            if self.place is not None:
                self.place.release()


class Running(NamedTuple):
    """A generation holding a slot, as :meth:`Admission.snapshot` reports it."""

    model: str
    caller: Caller
    backend: str
    seconds: float


class Waiting(NamedTuple):
    """A generation waiting, with its place in the order it would be served (1: next)."""

    model: str
    caller: Caller
    position: int
    seconds: float


class Admission:
    """Counts running generations and queues the ones that must wait, in fair turns across keys."""

    def __init__(
        self,
        total: int,
        per_model: int,
        queue: int,
        wait_seconds: float,
        metrics: Metrics | None = None,
        *,
        key_max_concurrent: int = 0,
        concurrency: KeyConcurrency | None = None,
    ) -> None:
        self.total = total
        self.per_model = per_model
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.metrics = metrics
        self.key_max_concurrent = key_max_concurrent
        """The bound of the keyless caller (configured keys carry their own, defaults applied)."""
        self.concurrency = concurrency
        """Where the keys' places are held (the state home's; the runtime sets it once it opened the home)."""
        self.running = 0
        self.waiting = 0
        """Generations waiting: for a slot, or for a place of their key."""
        self._by_model: Counter[str] = Counter()
        self._fair = FairQueue()
        self._placing: dict[Waiter, None] = {}
        """Waiters that wait for a place of their key, in arrival order."""
        self._placed: Counter[str] = Counter()
        """By key: this process's requests holding a place of their key, or waiting for one."""
        self._slots: dict[Slot, None] = {}
        self._seq = 0
        self._by_key: Counter[str] = Counter()
        """Generations waiting, by the key's name: read by ``minato_queue_waiting`` when it is scraped."""
        if metrics is not None:
            # Read when scraped, not set at every move of the queue: a waiter costs no metric lock.
            metrics.queue_depth.set_function(lambda: self.waiting)

    def _fits(self, model: str) -> bool:
        return self.running < self.total and (not self.per_model or self._by_model[model] < self.per_model)

    def _take(self, model: str) -> None:
        self.running += 1
        self._by_model[model] += 1

    def _limit(self, caller: Caller) -> int:
        return caller.max_concurrent or (0 if caller.fingerprint else self.key_max_concurrent)

    def try_acquire(self, model: str, caller: Caller = ANONYMOUS, record: RequestRecord | None = None) -> Slot | None:
        """Take a slot if one is free right now, nobody waits for one and the key has no bound to check;
        else ``None``. (A request waiting for its key's place does not hold the others back.)"""
        if not self._fair.size and self._fits(model) and not self._limit(caller):
            self._take(model)
            slot = Slot(self, model, caller, record, record.started if record is not None else time.perf_counter())
            self._slots[slot] = None
            return slot
        return None

    async def acquire(self, model: str, caller: Caller = ANONYMOUS, record: RequestRecord | None = None) -> Slot:
        """Wait (bounded) for room to run a generation on ``model`` for ``caller``; ``record`` learns how
        long it waited (``queue_seconds``)."""
        slot = self.try_acquire(model, caller, record)
        if slot is not None:
            return slot
        concurrency = self.concurrency
        limit = self._limit(caller) if concurrency is not None else 0
        if self.waiting >= self.queue and not self._runs_at_once(model, caller.fingerprint, limit):
            self._reject("queue_full")
            raise OverloadedError(f"too many generations waiting ({self.queue}); try again shortly")
        self._seq += 1
        waiter = Waiter(model, caller, record, time.perf_counter(), self._seq)
        self._enter(waiter)
        place: HeldTurn | None = None
        try:
            async with asyncio.timeout(self.wait_seconds):
                if limit and concurrency is not None:
                    place = await self._place(waiter, concurrency, limit)
                if self._fair.size or not self._fits(model):
                    waiter.future = asyncio.get_running_loop().create_future()
                    self._fair.push(waiter)
                    await waiter.future
                else:  # nobody waits for a slot and its model has room (it waited for its key's place)
                    self._take(model)
        except BaseException as exc:
            self._abandon(waiter)
            if limit:
                self._placed[caller.fingerprint] -= 1
            if place is not None:
                place.release()
            if isinstance(exc, TimeoutError):
                self._reject("queue_timeout")
                raise OverloadedError(f"no generation slot within {self.wait_seconds:g} s; try again shortly") from None
            raise
        finally:
            self._leave(waiter)
        now = time.perf_counter()
        if record is not None:
            record.queue_seconds = now - waiter.since
        slot = Slot(self, model, caller, record, now, place)
        self._slots[slot] = None
        return slot

    def _runs_at_once(self, model: str, key: str, limit: int) -> bool:
        """Whether a request of a key with a bound, which takes the queue's path to hold its key's place,
        would run at once: a slot is free and, as far as this process knows, its key has room. Such a
        request is not refused for a full queue (at most ``limit`` of a key pass this way)."""
        return bool(limit) and not self._fair.size and self._fits(model) and self._placed[key] < limit

    async def _place(self, waiter: Waiter, concurrency: KeyConcurrency, limit: int) -> HeldTurn:
        """Hold a place of the waiter's key (it counts as waiting meanwhile)."""
        self._placed[waiter.caller.fingerprint] += 1
        self._placing[waiter] = None
        try:
            return await concurrency.acquire(waiter.caller.fingerprint, limit)
        finally:
            del self._placing[waiter]

    def _abandon(self, waiter: Waiter) -> None:
        future = waiter.future
        if future is None:
            return  # it never waited for a slot (it gave up while waiting for its key's place)
        if future.done() and not future.cancelled():
            # Granted in the very instant it was given up: hand the slot straight on.
            self._free(waiter.model)
        else:
            future.cancel()
            self._fair.remove(waiter)

    def _enter(self, waiter: Waiter) -> None:
        self.waiting += 1
        name = waiter.caller.name
        if name not in self._by_key and self.metrics is not None:
            by_key = self._by_key
            self.metrics.waiting_of(name).set_function(lambda: by_key[name])
        self._by_key[name] += 1

    def _leave(self, waiter: Waiter) -> None:
        self.waiting -= 1
        self._by_key[waiter.caller.name] -= 1  # the names stay: as bounded as the keys
        if self.metrics is not None:
            self.metrics.observe_queue_wait(waiter.model, time.perf_counter() - waiter.since)

    def _release(self, slot: Slot) -> None:
        del self._slots[slot]
        if slot.place is not None:
            self._placed[slot.caller.fingerprint] -= 1
        self._free(slot.model)

    def _free(self, model: str) -> None:
        self.running -= 1
        self._by_model[model] -= 1
        if not self._by_model[model]:
            del self._by_model[model]
        # Serve the keys in turn, as many as now fit (the others keep their place).
        fair = self._fair
        while fair.size and self.running < self.total:
            waiter = fair.pop_next(self._fits)
            if waiter is None:
                break
            self._take(waiter.model)
            if waiter.future is not None:  # always: only waiters with a future are in the fair queue
                waiter.future.set_result(None)

    def waiting_of(self, name: str) -> int:
        """How many generations of the key named ``name`` wait in this process now."""
        return self._by_key.get(name, 0)

    def snapshot(self) -> tuple[list[Running], list[Waiting]]:
        """What runs and what waits in this process now; the waiting in the order they would be served
        (those still waiting for a place of their key last, in arrival order)."""
        now = time.perf_counter()
        running = [
            Running(slot.model, slot.caller, slot.record.backend if slot.record is not None else "", now - slot.since)
            for slot in self._slots
        ]
        order = [*self._fair.in_order(), *self._placing]
        waiting = [
            Waiting(waiter.model, waiter.caller, position, now - waiter.since)
            for position, waiter in enumerate(order, 1)
        ]
        return running, waiting

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejections.labels(reason).inc()


__all__ = ["Admission", "Running", "Slot", "Waiting"]
