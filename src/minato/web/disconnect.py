"""Cancelling work the moment its client leaves, so Ollama stops computing answers nobody will read.

One watcher per request: :func:`watch_of` keeps a :class:`RequestWatch` in the request's scope, and
its task is started by the first wait that needs it (the usual whole answer, with a free slot and
no conversation, starts it once, for the call to Ollama). Every later wait of the request (the
conversation's turn, a slot, Ollama's answer, a stream's relay) uses the same task. The task ends
by itself once the response is complete: the server then answers ``receive`` with the
``http.disconnect`` the ASGI spec promises after a response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, Final, TypeVar

from litestar.types import Receive, Scope

from minato.errors import ClientDisconnectedError

T = TypeVar("T")

#: Scope state key of the request's watch.
WATCH_KEY: Final = "minato.watch"


class RequestWatch:
    """Implements :class:`minato.core.watch.Watch` over the ASGI ``receive`` of one request.

    The request body has been read by the time anything waits under the watch, so the next ASGI
    message can only be the disconnect. The work runs in the request's own task and the watcher
    cancels that task while it waits: a task for the work as well cost as much as the rest of a
    whole answer's bookkeeping. Cancelling closes the call to Ollama, which stops generating.
    """

    __slots__ = ("_cancelled", "_receive", "_waiting", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._watcher: asyncio.Task[None] | None = None
        self._waiting: asyncio.Task[Any] | None = None
        """The request's task while it waits under the watch."""
        self._cancelled = False
        self.gone = False
        """Whether the client disconnected."""

    async def until(self, work: Awaitable[T]) -> T:
        """Await ``work``, cancelling it with :class:`ClientDisconnectedError` if the client disconnects."""
        if self.gone:
            if isinstance(work, Coroutine):
                work.close()  # never started: nothing to cancel
            raise ClientDisconnectedError("client disconnected")
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a request's task
            raise RuntimeError("a watch needs a running task")
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        outer, self._waiting = self._waiting, task
        try:
            return await work
        except asyncio.CancelledError:
            if self._cancelled:
                self._cancelled = False
                task.uncancel()  # the cancellation was the watch's own, and it ends here
                raise ClientDisconnectedError("client disconnected") from None
            raise
        finally:
            self._waiting = outer

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        waiting = self._waiting
        if waiting is not None:
            self._cancelled = True
            waiting.cancel()


def watch_of(scope: Scope, receive: Receive) -> RequestWatch:
    """The watch of the request in ``scope`` (made on first use: one per request)."""
    state = scope.setdefault("state", {})
    watch: RequestWatch | None = state.get(WATCH_KEY)
    if watch is None:
        watch = state[WATCH_KEY] = RequestWatch(receive)
    return watch


__all__ = ["RequestWatch", "watch_of"]
