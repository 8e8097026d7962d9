"""Whose turn it is: start-time fair queuing across keys (Goyal, Vin and Cheng, SIGCOMM 1996).

Each key with requests waiting is a flow with a *start tag* on a shared virtual clock. The next free
slot goes to the flow with the smallest start tag (ties: the flow whose first request came first);
serving it moves the clock to that tag and the flow's tag on by ``STRIDE // weight``, so over any
stretch in which two keys both wait, they are served in proportion to their weights, give or take
one turn. A key that starts waiting gets ``max(clock, the tag it left with)``: idle time banks no
credit, and leaving and coming back buys no extra turn either. Within a key, requests go in arrival
order: the first one whose model has room (the per-model bound) goes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.observability.record import RequestRecord

#: The virtual time one turn of a weight-1 key takes; an integer so that tags never drift.
STRIDE: Final = 1 << 32
#: Remembered tags of idle keys beyond which the ones the clock has passed are dropped.
_REMEMBERED: Final = 256


class Waiter:
    """One generation waiting for a slot (or, before that, for a place of its key)."""

    __slots__ = ("caller", "future", "model", "record", "seq", "since")

    def __init__(self, model: str, caller: Caller, record: RequestRecord | None, since: float, seq: int) -> None:
        self.model = model
        self.caller = caller
        self.record = record
        self.since = since
        """``perf_counter()`` when it began to wait."""
        self.seq = seq
        """Its arrival among every waiter of the process (breaks ties between keys)."""
        self.future: asyncio.Future[None] | None = None
        """Set once it waits in the fair queue; its result is the grant."""


class _Flow:
    """The waiting requests of one key, and the virtual start tag of its next turn."""

    __slots__ = ("start", "stride", "waiters")

    def __init__(self, start: int, weight: int) -> None:
        self.start = start
        self.stride = STRIDE // max(weight, 1)
        self.waiters: deque[Waiter] = deque()

    def order(self) -> tuple[int, int]:
        return self.start, self.waiters[0].seq


class FairQueue:
    """The waiters of every key, served in start-time fair order across keys, in arrival order within one."""

    __slots__ = ("_flows", "_idle", "size", "vtime")

    def __init__(self) -> None:
        self._flows: dict[str, _Flow] = {}
        self._idle: dict[str, int] = {}
        """The tags keys left with while still ahead of the clock (so that leaving buys no turn)."""
        self.vtime = 0
        self.size = 0

    def push(self, waiter: Waiter) -> None:
        """``waiter`` waits its key's turn, behind the key's earlier requests."""
        key = waiter.caller.fingerprint
        flow = self._flows.get(key)
        if flow is None:
            start = max(self.vtime, self._idle.pop(key, 0))
            flow = self._flows[key] = _Flow(start, waiter.caller.weight)
        flow.waiters.append(waiter)
        self.size += 1

    def remove(self, waiter: Waiter) -> None:
        """Take ``waiter`` out (it gave up); nothing if it is no longer in the queue."""
        key = waiter.caller.fingerprint
        flow = self._flows.get(key)
        if flow is None:
            return
        try:
            flow.waiters.remove(waiter)
        except ValueError:
            return
        self.size -= 1
        if not flow.waiters:
            self._retire(key, flow)

    def pop_next(self, fits: Callable[[str], bool]) -> Waiter | None:
        """The waiter to serve now: of the key whose turn it is among those with a waiter that ``fits``
        (its model has room), that key's first such waiter; ``None`` when none fits."""
        flows = self._flows
        candidates = flows.items() if len(flows) == 1 else sorted(flows.items(), key=lambda item: item[1].order())
        for key, flow in candidates:
            for waiter in flow.waiters:
                future = waiter.future
                if future is not None and not future.done() and fits(waiter.model):
                    self._serve(key, flow, waiter)
                    return waiter
        return None

    def _serve(self, key: str, flow: _Flow, waiter: Waiter) -> None:
        if flow.waiters[0] is waiter:
            flow.waiters.popleft()
        else:
            flow.waiters.remove(waiter)
        self.size -= 1
        self.vtime = max(self.vtime, flow.start)
        flow.start += flow.stride
        if not flow.waiters:
            self._retire(key, flow)

    def _retire(self, key: str, flow: _Flow) -> None:
        del self._flows[key]
        if flow.start > self.vtime:
            idle = self._idle
            if len(idle) >= _REMEMBERED:
                for passed in [k for k, tag in idle.items() if tag <= self.vtime]:
                    del idle[passed]
            idle[key] = flow.start

    def in_order(self) -> Iterator[Waiter]:
        """Every waiter, in the order the queue would serve them if every model had room."""
        tags = {key: flow.start for key, flow in self._flows.items()}
        heads = dict.fromkeys(self._flows, 0)
        flows = self._flows
        while tags:
            key = min(tags, key=lambda k: (tags[k], flows[k].waiters[heads[k]].seq))
            flow = flows[key]
            yield flow.waiters[heads[key]]
            heads[key] += 1
            if heads[key] == len(flow.waiters):
                del tags[key]
            else:
                tags[key] += flow.stride


__all__ = ["STRIDE", "FairQueue", "Waiter"]
