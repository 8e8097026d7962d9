"""The asyncio helpers every layer uses (:mod:`minato.tasks`)."""

from __future__ import annotations

import asyncio

import pytest

from minato.tasks import cancel_and_wait, keep

pytestmark = pytest.mark.anyio


async def test_a_kept_task_is_held_until_it_is_done_then_let_go() -> None:
    held: set[asyncio.Task[None]] = set()
    go = asyncio.Event()

    async def work() -> None:
        await go.wait()

    task = keep(held, work())
    assert held == {task}, "held while it runs: the loop keeps only a weak reference"

    go.set()
    await task  # its done callbacks ran before this wait was woken: they were added first
    assert held == set()


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
