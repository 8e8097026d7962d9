"""One disconnect watcher per request: every wait of a request uses it, and a disconnect ends the one in progress."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.types import ReceiveMessage

from minato.errors import ClientDisconnectedError
from minato.web.disconnect import RequestWatch, watch_of
from minato.web.lane import LaneListener

pytestmark = pytest.mark.anyio


class Connection:
    """An ASGI ``receive`` whose body was read: it waits until the test disconnects the client."""

    def __init__(self) -> None:
        self.calls = 0
        self.gone = asyncio.Event()
        self.told = asyncio.Event()

    async def receive(self) -> ReceiveMessage:
        self.calls += 1
        await self.gone.wait()
        self.told.set()
        return {"type": "http.disconnect"}


async def test_several_waits_of_a_request_share_one_watcher() -> None:
    connection = Connection()
    watch = RequestWatch(connection.receive)

    async def value(number: int) -> int:
        await asyncio.sleep(0)
        return number

    assert [await watch.until(value(number)) for number in range(3)] == [0, 1, 2]
    assert connection.calls == 1  # one watcher, started by the first wait, still listening
    connection.gone.set()  # the response is complete: the server says so, and the watcher ends
    await connection.told.wait()
    assert watch.left


async def test_a_disconnect_ends_the_wait_in_progress_and_cancels_its_work() -> None:
    connection = Connection()
    watch = RequestWatch(connection.receive)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def ollama() -> str:
        started.set()
        try:
            await asyncio.Event().wait()  # an answer that never comes
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def disconnect() -> None:
        await started.wait()
        connection.gone.set()

    disconnecting = asyncio.get_running_loop().create_task(disconnect())
    with pytest.raises(ClientDisconnectedError):
        await watch.until(ollama())
    await disconnecting
    assert cancelled.is_set()
    assert watch.left
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # the watch's own cancellation ended with the wait


async def test_a_wait_after_the_client_left_ends_at_once_without_starting_its_work() -> None:
    connection = Connection()
    watch = RequestWatch(connection.receive)
    connection.gone.set()
    with pytest.raises(ClientDisconnectedError):
        await watch.until(asyncio.Event().wait())
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(ClientDisconnectedError):
        await watch.until(work())
    assert not ran
    assert connection.calls == 1


async def test_a_cancellation_that_is_not_the_watchs_stays_a_cancellation() -> None:
    connection = Connection()
    watch = RequestWatch(connection.receive)
    waiting = asyncio.Event()

    async def request() -> None:
        async def slow() -> None:
            waiting.set()
            await asyncio.Event().wait()

        await watch.until(slow())

    task = asyncio.get_running_loop().create_task(request())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watch.left
    connection.gone.set()


def test_a_request_has_one_watch() -> None:
    connection = Connection()
    scope: dict[str, Any] = {"type": "http"}
    first = watch_of(scope, connection.receive)  # type: ignore[arg-type]
    assert watch_of(scope, connection.receive) is first  # type: ignore[arg-type]


class Lane:
    """A served request's lane: it tells its one listener when the client leaves."""

    def __init__(self) -> None:
        self.listener: LaneListener | None = None

    def write(self, chunk: bytes) -> None:
        raise AssertionError("a watch writes nothing")

    @property
    def gone(self) -> bool:
        return False

    def listen(self, listener: LaneListener | None) -> None:
        self.listener = listener


async def test_with_a_lane_the_client_leaving_ends_the_wait_without_a_watcher_task() -> None:
    connection, lane = Connection(), Lane()
    watch = RequestWatch(connection.receive, lane)
    started = asyncio.Event()
    tasks_before = len(asyncio.all_tasks())

    async def ollama() -> str:
        started.set()
        await asyncio.Event().wait()  # an answer that never comes
        return "never"

    async def disconnect() -> None:
        await started.wait()
        assert len(asyncio.all_tasks()) == tasks_before + 1, "only this test's helper: no watcher task"
        assert lane.listener is watch
        lane.listener.gone()  # the connection's loss callback

    disconnecting = asyncio.get_running_loop().create_task(disconnect())
    with pytest.raises(ClientDisconnectedError):
        await watch.until(ollama())
    await disconnecting
    assert watch.left
    assert connection.calls == 0, "receive() is never awaited: the lane tells"
