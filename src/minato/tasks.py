"""asyncio helpers every layer uses: holding a task until it is done, stopping a background task. A
leaf: it imports nothing of Minato's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


def keep(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``work`` as a task of its own, held in ``tasks`` until it is done: the loop keeps only a weak
    reference to a task, and a task nobody holds may vanish mid-way."""
    task = asyncio.get_running_loop().create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task (if there is one) and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["cancel_and_wait", "keep"]
