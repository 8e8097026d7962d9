"""Cancelling work the moment its client leaves, so Ollama stops computing answers nobody will read.

One watch per request: :func:`watch_of` keeps a :class:`RequestWatch` in the request's scope. On
Minato's server it listens to the request's :mod:`lane <minato.web.lane>`, which tells it from the
connection's loss callback: no task at all. Without a lane (an in-process test client) a watcher
task is started by the first wait that needs it (the usual whole answer, with a free slot and no
conversation, starts it once, for the call to Ollama), and every later wait of the request (the
conversation's turn, a slot, Ollama's answer, a stream's relay) uses the same task. That task ends
by itself once the response is complete: the server then answers ``receive`` with the
``http.disconnect`` the ASGI spec promises after a response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, Final, TypeVar

from litestar.types import Receive, Scope

from minato.errors import ClientDisconnectedError
from minato.web.lane import Lane, lane_of

T = TypeVar("T")

#: Scope state key of the request's watch.
WATCH_KEY: Final = "minato.watch"


class RequestWatch:
    """Implements :class:`minato.core.watch.Watch` over the lane, or the ASGI ``receive``, of one request.

    The request body has been read by the time anything waits under the watch, so the next ASGI
    message can only be the disconnect. The work runs in the request's own task and the watcher
    cancels that task while it waits: a task for the work as well cost as much as the rest of a
    whole answer's bookkeeping. Cancelling closes the call to Ollama, which stops generating.
    """

    __slots__ = ("_cancelled", "_lane", "_receive", "_waiting", "_watcher", "left")

    def __init__(self, receive: Receive, lane: Lane | None = None) -> None:
        self._receive = receive
        self._lane = lane
        self._watcher: asyncio.Task[None] | None = None
        self._waiting: asyncio.Task[Any] | None = None
        """The request's task while it waits under the watch."""
        self._cancelled = False
        self.left = False
        """Whether the client disconnected."""
        if lane is not None:
            lane.listen(self)

    async def until(self, work: Awaitable[T]) -> T:
        """Await ``work``, cancelling it with :class:`ClientDisconnectedError` if the client disconnects."""
        if self.left:
            if isinstance(work, Coroutine):
                work.close()  # never started: nothing to cancel
            raise ClientDisconnectedError("client disconnected")
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a request's task
            raise RuntimeError("a watch needs a running task")
        if self._watcher is None and self._lane is None:
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
        self.gone()

    # The lane's listener: only its client's leaving matters to a wait.

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def gone(self) -> None:
        """The client left: end the wait in progress (from the lane's loss callback, or the watcher task)."""
        self.left = True
        waiting = self._waiting
        if waiting is not None:
            self._cancelled = True
            waiting.cancel()


def watch_of(scope: Scope, receive: Receive) -> RequestWatch:
    """The watch of the request in ``scope`` (made on first use: one per request)."""
    state = scope.setdefault("state", {})
    watch: RequestWatch | None = state.get(WATCH_KEY)
    if watch is None:
        watch = state[WATCH_KEY] = RequestWatch(receive, lane_of(scope))
    return watch


__all__ = ["RequestWatch", "watch_of"]
