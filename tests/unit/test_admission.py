"""The generation queue: fair turns across keys (weights, FCFS within a key), the bounds it keeps
(overall, per model, per key), and what it leaves behind when a wait ends badly."""

from __future__ import annotations

import asyncio

import pytest

from minato.auth.caller import ANONYMOUS, Caller
from minato.core.admission import Admission, Slot
from minato.errors import OverloadedError
from minato.observability.metrics import Metrics
from minato.observability.record import RequestRecord
from minato.state.concurrency import LocalKeyConcurrency
from tests.support.callers import A, B, C, key
from tests.support.waiting import settled

pytestmark = pytest.mark.anyio


class Served:
    """Requests queued on an admission of one slot, and the order in which they got it."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.order: list[str] = []
        self.tasks: list[asyncio.Task[Slot]] = []

    async def queue(self, caller: Caller, label: str, model: str = "m") -> asyncio.Task[Slot]:
        waiting = self.admission.waiting

        async def take() -> Slot:
            slot = await self.admission.acquire(model, caller)
            self.order.append(label)
            return slot

        task = asyncio.ensure_future(take())
        self.tasks.append(task)
        await settled(lambda: self.admission.waiting == waiting + 1 or task.done(), f"{label} queued")
        return task


async def drain(served: Served, first: Slot) -> list[str]:
    """Release slots one at a time, each as soon as it is granted, until nobody waits."""
    slot: Slot | None = first
    done = {task for task in served.tasks if task.done()}
    while slot is not None:
        before = len(served.order)
        slot.release()
        if all(t.done() for t in served.tasks):
            break
        await settled(lambda before=before: len(served.order) > before, "the next one was served")  # type: ignore[misc]
        granted = [t for t in served.tasks if t.done() and t not in done]
        assert len(granted) == 1, "one slot, one grant"
        done.add(granted[0])
        slot = granted[0].result()
    assert served.admission.running == 0
    assert served.admission.waiting == 0
    return served.order


async def test_the_next_slot_goes_to_the_key_whose_turn_it_is_not_to_the_oldest_request() -> None:
    admission = Admission(total=1, per_model=0, queue=100, wait_seconds=30)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    for n in range(2, 7):
        await served.queue(A, f"a{n}")
    await served.queue(B, "b1")
    await served.queue(B, "b2")

    order = await drain(served, running)

    # b1 right after the one that ran when bob came; then the two keys take turns.
    assert order == ["a2", "b1", "a3", "b2", "a4", "a5", "a6"]


async def test_a_key_that_arrives_later_is_served_within_one_turn() -> None:
    admission = Admission(total=1, per_model=0, queue=100, wait_seconds=30)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    for n in range(2, 7):
        await served.queue(A, f"a{n}")
    # a2 runs when bob arrives; bob banks nothing for the time he was away, and loses nothing either.
    before = len(served.order)
    running.release()
    await settled(lambda: len(served.order) > before, "a2 served")
    running = next(t for t in served.tasks if t.done()).result()
    await served.queue(B, "b1")
    await served.queue(B, "b2")

    order = await drain(served, running)

    assert order == ["a2", "b1", "a3", "b2", "a4", "a5", "a6"]


async def test_weights_share_the_turns_in_proportion() -> None:
    heavy, light = key("heavy", weight=2), key("light")
    admission = Admission(total=1, per_model=0, queue=100, wait_seconds=30)
    served = Served(admission)
    running = admission.try_acquire("m", heavy)
    assert running is not None
    for _ in range(8):
        await served.queue(heavy, "H")
    for _ in range(4):
        await served.queue(light, "L")

    order = await drain(served, running)

    assert "".join(order) == "HLHHLHHLHHLH"


async def test_three_keys_take_turns_and_each_keeps_its_own_order() -> None:
    admission = Admission(total=1, per_model=0, queue=100, wait_seconds=30)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    for caller, prefix in ((A, "a"), (B, "b"), (C, "c")):
        for n in range(3):
            await served.queue(caller, f"{prefix}{n}")

    order = await drain(served, running)

    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


async def test_within_a_key_the_first_request_whose_model_has_room_goes() -> None:
    admission = Admission(total=2, per_model=1, queue=100, wait_seconds=30)
    served = Served(admission)
    on_x = admission.try_acquire("x", B)
    on_y = admission.try_acquire("y", B)
    assert on_x is not None
    assert on_y is not None
    await served.queue(A, "a-x1", "x")
    await served.queue(A, "a-y", "y")
    await served.queue(A, "a-x2", "x")

    on_y.release()
    await settled(lambda: served.order == ["a-y"], "a's request for y passed its request for x")
    on_x.release()
    await settled(lambda: served.order == ["a-y", "a-x1"], "then a's first request for x")
    for task in served.tasks[:2]:
        task.result().release()
    await settled(lambda: served.order == ["a-y", "a-x1", "a-x2"], "and its second, in order")
    served.tasks[2].result().release()
    assert admission.running == 0


async def test_a_full_queue_refuses_at_once_whoever_asks() -> None:
    metrics = Metrics()
    admission = Admission(total=1, per_model=0, queue=2, wait_seconds=30, metrics=metrics)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    await served.queue(A, "a1")
    await served.queue(B, "b1")

    with pytest.raises(OverloadedError, match="too many generations waiting"):
        await admission.acquire("m", C)

    assert metrics.registry.get_sample_value("minato_rejections_total", {"reason": "queue_full"}) == 1
    assert metrics.registry.get_sample_value("minato_queue_depth") == 2
    assert await drain(served, running) == ["a1", "b1"]
    assert metrics.registry.get_sample_value("minato_queue_depth") == 0


async def test_a_wait_that_times_out_is_a_503_and_leaves_the_order_intact() -> None:
    admission = Admission(total=1, per_model=0, queue=10, wait_seconds=0.05)
    running = admission.try_acquire("m", A)
    assert running is not None

    with pytest.raises(OverloadedError, match="no generation slot"):
        await admission.acquire("m", B)

    assert admission.waiting == 0
    running.release()
    assert admission.running == 0
    again = admission.try_acquire("m", B)
    assert again is not None, "nothing of the timed-out wait stays in the way"
    again.release()


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    admission = Admission(total=1, per_model=0, queue=10, wait_seconds=30)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    gone = await served.queue(B, "b1")
    await served.queue(C, "c1")

    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    served.tasks.remove(gone)

    assert admission.waiting == 1
    assert await drain(served, running) == ["c1"]


async def test_a_waiter_granted_in_the_instant_it_is_cancelled_hands_the_slot_on() -> None:
    admission = Admission(total=1, per_model=0, queue=10, wait_seconds=30)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    unlucky = await served.queue(B, "b1")
    await served.queue(C, "c1")

    running.release()  # b1 is granted the slot...
    unlucky.cancel()  # ...and cancelled before it could take it
    await asyncio.gather(unlucky, return_exceptions=True)
    served.tasks.remove(unlucky)

    await settled(lambda: served.order == ["c1"], "the slot went on to c1")
    served.tasks[0].result().release()
    assert admission.running == 0
    assert admission.waiting == 0


async def test_a_key_at_its_bound_waits_while_another_key_runs_beside_it() -> None:
    bounded = key("bounded", max_concurrent=1)
    admission = Admission(total=4, per_model=0, queue=10, wait_seconds=30, concurrency=LocalKeyConcurrency())
    served = Served(admission)
    first = await admission.acquire("m", bounded)
    second = await served.queue(bounded, "second")
    other = await served.queue(B, "other")

    await settled(lambda: served.order == ["other"], "another key's request ran beside it")
    assert not second.done(), "the bounded key's second request waits for its first"
    assert admission.running == 2
    report = admission.snapshot()
    assert [w.caller.name for w in report[1]] == ["bounded"], "it counts as waiting"
    assert admission.waiting_of("bounded") == 1, "and /usage reports it waiting"
    assert admission.waiting_of(B.name) == 0

    first.release()
    await settled(second.done, "the second request goes once the first is done")
    second.result().release()
    other.result().release()
    assert admission.running == 0
    assert await admission.concurrency.running(bounded.fingerprint) == 0  # type: ignore[union-attr]


async def test_a_key_waiting_for_its_place_counts_against_the_queue_and_its_timeout() -> None:
    bounded = key("bounded", max_concurrent=1)
    concurrency = LocalKeyConcurrency()
    admission = Admission(total=1, per_model=0, queue=1, wait_seconds=0.05, concurrency=concurrency)
    first = await admission.acquire("m", bounded)
    waiting = asyncio.ensure_future(admission.acquire("m", bounded))
    await settled(lambda: admission.waiting == 1, "the second request waits for its key's place")

    with pytest.raises(OverloadedError, match="too many generations waiting"):
        await admission.acquire("m", B)
    with pytest.raises(OverloadedError, match="no generation slot"):
        await waiting

    first.release()
    assert admission.waiting == 0
    assert admission.running == 0
    assert await concurrency.running(bounded.fingerprint) == 0, "the timed-out wait holds no place"


async def test_without_a_queue_a_bounded_key_runs_while_it_has_room_and_is_refused_at_its_bound() -> None:
    bounded = key("bounded", max_concurrent=1)
    concurrency = LocalKeyConcurrency()
    admission = Admission(total=4, per_model=0, queue=0, wait_seconds=30, concurrency=concurrency)

    first = await admission.acquire("m", bounded)
    with pytest.raises(OverloadedError, match="too many generations waiting"):
        await admission.acquire("m", bounded)
    other = await admission.acquire("m", B)

    assert admission.running == 2
    first.release()
    again = await admission.acquire("m", bounded)
    again.release()
    other.release()
    assert admission.running == admission.waiting == 0
    assert await concurrency.running(bounded.fingerprint) == 0


async def test_the_keyless_caller_is_bound_by_the_default_key_bound() -> None:
    concurrency = LocalKeyConcurrency()
    admission = Admission(
        total=4, per_model=0, queue=10, wait_seconds=30, key_max_concurrent=1, concurrency=concurrency
    )
    assert admission.try_acquire("m", ANONYMOUS) is None, "a bound to check: no fast path"
    first = await admission.acquire("m", ANONYMOUS)
    second = asyncio.ensure_future(admission.acquire("m", ANONYMOUS))
    await settled(lambda: admission.waiting == 1, "the second keyless request waits")

    first.release()
    slot = await asyncio.wait_for(second, 5)
    slot.release()
    slot.release()  # twice: the slot and the place are given back once
    assert admission.running == 0
    assert await concurrency.running("") == 0


async def test_a_cancelled_wait_for_a_place_leaves_nothing_held() -> None:
    bounded = key("bounded", max_concurrent=1)
    concurrency = LocalKeyConcurrency()
    admission = Admission(total=1, per_model=0, queue=10, wait_seconds=30, concurrency=concurrency)
    first = await admission.acquire("m", bounded)
    placed = asyncio.ensure_future(admission.acquire("m", bounded))
    await settled(lambda: admission.waiting == 1, "waiting for its place")

    first.release()  # the place passes to the waiting request...
    placed.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(placed, return_exceptions=True)

    assert admission.waiting == 0
    assert admission.running == 0
    assert await concurrency.running(bounded.fingerprint) == 0


async def test_the_waiting_gauge_and_the_wait_histogram_follow_the_queue() -> None:
    metrics = Metrics()
    metrics.model_label = lambda model: model or ""
    admission = Admission(total=1, per_model=0, queue=10, wait_seconds=30, metrics=metrics)
    served = Served(admission)
    running = admission.try_acquire("m", A)
    assert running is not None
    record = RequestRecord("r1", 0.0)
    waiting = asyncio.ensure_future(admission.acquire("m", B, record))
    served.tasks.append(waiting)
    await settled(lambda: admission.waiting == 1, "bob waits")
    assert metrics.registry.get_sample_value("minato_queue_waiting", {"key": "bob"}) == 1

    running.release()
    slot = await asyncio.wait_for(waiting, 5)

    assert metrics.registry.get_sample_value("minato_queue_waiting", {"key": "bob"}) == 0
    assert record.queue_seconds > 0
    assert metrics.registry.get_sample_value("minato_queue_wait_seconds_count", {"model": "m"}) == 1
    slot.release()


async def test_the_snapshot_lists_the_waiting_in_the_order_they_will_be_served() -> None:
    admission = Admission(total=1, per_model=0, queue=10, wait_seconds=30)
    served = Served(admission)
    record = RequestRecord("r0", 0.0)
    record.backend = "gpu1:11434"
    running = admission.try_acquire("m", A, record)
    assert running is not None
    for label in ("a1", "a2"):
        await served.queue(A, label)
    await served.queue(B, "b1")

    now_running, waiting = admission.snapshot()

    assert [(r.caller.name, r.backend) for r in now_running] == [("alice", "gpu1:11434")]
    assert [(w.caller.name, w.position) for w in waiting] == [("alice", 1), ("bob", 2), ("alice", 3)]
    assert await drain(served, running) == ["a1", "b1", "a2"]
