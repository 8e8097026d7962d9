"""Cancelling work the moment its client leaves, so Ollama stops computing answers nobody will read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request

from minato.errors import ClientDisconnectedError

T = TypeVar("T")


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it the moment the client disconnects.

    The request body has been read by now, so the next ASGI message can only be the disconnect.
    Cancelling closes the call to Ollama, which stops generating instead of computing an answer
    nobody will read. ``work`` runs in the request's own task and one watcher task waits for the
    disconnect: a task for the work as well cost as much as the rest of a whole answer's bookkeeping.
    """
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always called from a request's task
        raise RuntimeError("unless_disconnected needs a running task")
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()  # the cancellation was this function's own, and it ends here
            raise ClientDisconnectedError("client disconnected") from None
        raise
    finally:
        watcher.cancel()


__all__ = ["unless_disconnected"]
