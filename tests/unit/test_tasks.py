"""The asyncio helpers every layer shares: one call in flight per key, and background tasks held until done."""

from __future__ import annotations

import asyncio
import functools

import pytest
from structlog.testing import capture_logs

from minato.tasks import Background, SingleFlight, cancel_and_wait

pytestmark = pytest.mark.anyio


async def test_concurrent_callers_of_one_key_share_one_call_and_other_keys_get_their_own() -> None:
    flight: SingleFlight[str, str] = SingleFlight("test")
    release = asyncio.Event()
    calls: list[str] = []

    async def look_up(key: str) -> str:
        calls.append(key)
        await release.wait()
        return key.upper()

    waiting = [asyncio.create_task(flight.run(key, functools.partial(look_up, key))) for key in ("a", "a", "b", "a")]
    await asyncio.sleep(0)
    assert flight.pending("a")
    assert flight.pending("b")
    release.set()
    assert await asyncio.gather(*waiting) == ["A", "A", "B", "A"]
    assert sorted(calls) == ["a", "b"]
    assert not flight.pending("a")
    assert await flight.run("a", lambda: look_up("a")) == "A"  # over: the next caller asks again
    assert sorted(calls) == ["a", "a", "b"]


async def test_every_waiter_gets_the_calls_exception() -> None:
    flight: SingleFlight[None, int] = SingleFlight("test")
    release = asyncio.Event()

    async def failing() -> int:
        await release.wait()
        raise LookupError("gone")

    waiting = [asyncio.create_task(flight.run(None, failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [LookupError] * 3


async def test_a_caller_going_away_stops_neither_the_call_nor_the_others() -> None:
    flight: SingleFlight[None, str] = SingleFlight("test")
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    first = asyncio.create_task(flight.run(None, slow))
    second = asyncio.create_task(flight.run(None, slow))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await second == "done"


async def test_a_background_task_is_held_its_failure_logged_and_aclose_stops_the_rest() -> None:
    background = Background("test_task_failed")
    forever = asyncio.Event()

    async def fail() -> None:
        raise RuntimeError("broke")

    failing = asyncio.create_task(fail(), name="failing")
    waiting = asyncio.create_task(forever.wait(), name="waiting")
    with capture_logs() as logs:
        background.keep(failing)
        background.keep(waiting)
        await asyncio.wait([failing])
        await asyncio.sleep(0)  # the done callback runs on the next loop turn
    assert [(log["event"], log["task"]) for log in logs] == [("test_task_failed", "failing")]
    await background.aclose()
    assert waiting.cancelled()


async def test_a_started_task_is_held_until_it_is_done_then_let_go() -> None:
    background = Background("test_task_failed")
    go = asyncio.Event()

    async def work() -> None:
        await go.wait()

    task = background.start(work())
    assert background._tasks == {task}, "held while it runs: the loop keeps only a weak reference"

    go.set()
    await background.wait(None)
    assert background._tasks == set()


async def test_waiting_for_the_background_ends_at_its_timeout_and_leaves_the_tasks_running() -> None:
    background = Background("test_task_failed")

    async def forever() -> None:
        await asyncio.Event().wait()

    task = background.start(forever())

    await background.wait(0)

    assert not task.done()
    await background.aclose()
    assert task.cancelled()


async def test_cancel_and_wait_stops_a_task_and_accepts_none() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(forever())
    await started.wait()
    await cancel_and_wait(task)
    await cancel_and_wait(None)

    assert task.cancelled()
