"""Waiting on another process: poll until a condition holds, within a bounded deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How long to wait by default for another process to settle (stream counts, gauges back at zero).
SETTLE_S = 10.0


def eventually(
    read: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = SETTLE_S, poll: float = 0.05
) -> T:
    """Poll ``read`` until ``done`` holds, for at most ``timeout`` seconds; fail naming ``what``.

    The deadline bounds a wait on something that does happen, so a busy machine only makes the test
    slower; ``poll`` is the pause between reads of another process's state, not a guess at timing.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(poll)
        value = read()
    return value


async def settled(condition: Callable[[], bool], what: str, turns: int = 1000) -> None:
    """Let the event loop run other tasks until ``condition`` holds: for state in this process (a waiter
    queued, a lock taken), reached in a number of loop turns, whatever the machine's load."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what}: not reached in {turns} turns of the event loop")
