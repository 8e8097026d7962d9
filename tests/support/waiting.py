"""Waiting on another process: poll until a condition holds, within a bounded deadline, never a fixed sleep."""

from __future__ import annotations

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
