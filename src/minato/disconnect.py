"""Cancelling work: the moment its client leaves, so Ollama stops computing answers nobody will read; and
a background task, at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request

from minato.errors import ClientDisconnectedError

T = TypeVar("T")


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it the moment the client disconnects.

    The request body has been read by now, so the next ASGI message can only be the disconnect.
    Cancelling closes the call to Ollama, which stops generating instead of computing an answer
    nobody will read.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnectedError("client disconnected") from None
        raise
    finally:
        watcher.cancel()


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task (if there is one) and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["cancel_and_wait", "unless_disconnected"]
