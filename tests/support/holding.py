"""A request cancelled while it holds a turn or a key's place: what it held must still be given back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from minato.state.protocols import HeldTurn


async def cancel_while_holding(acquire: Callable[[], Awaitable[HeldTurn]], patience: float) -> None:
    """Run a request that takes what ``acquire`` gives and releases it in a ``finally``, as every request
    does; cancel it once it holds it (within ``patience`` seconds), and wait until it ended cancelled."""
    holding = asyncio.Event()

    async def request() -> None:
        held = await acquire()
        try:
            holding.set()
            await asyncio.sleep(3600)
        finally:
            held.release()

    task = asyncio.create_task(request())
    await asyncio.wait_for(holding.wait(), patience)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
