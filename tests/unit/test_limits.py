"""The body deadline of :class:`minato.web.limits.BodyTimeout`: from the first read, over every read, and
nothing once the body is in."""

from __future__ import annotations

import asyncio

import pytest
from litestar.types import ReceiveMessage

from minato.errors import RequestTimeoutError
from minato.web.limits import _bounded, _BoundedBody

pytestmark = pytest.mark.anyio


class Trickle:
    """A client sending its body in pieces, each released by the test."""

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[ReceiveMessage] = asyncio.Queue()

    async def receive(self) -> ReceiveMessage:
        return await self.pieces.get()

    def send(self, body: bytes, *, more: bool = True) -> None:
        self.pieces.put_nowait({"type": "http.request", "body": body, "more_body": more})


async def test_a_body_that_stops_arriving_is_a_408_and_a_complete_one_passes() -> None:
    client = Trickle()
    bounded = _bounded(client.receive, 0.2)
    client.send(b"{")

    first = await bounded()
    with pytest.raises(RequestTimeoutError) as refused:
        await bounded()  # the rest never comes

    assert first["type"] == "http.request"
    assert refused.value.status_code == 408
    assert refused.value.headers == {"Connection": "close"}
    assert "MINATO_BODY_TIMEOUT" in refused.value.detail
    task = asyncio.current_task()
    assert task is not None
    assert not task.cancelling(), "the timer's cancellation must not leak to the request"


async def test_the_deadline_covers_the_whole_body_not_each_read() -> None:
    client = Trickle()
    bounded = _bounded(client.receive, 0.3)

    async def trickle() -> int:
        reads = 0
        while reads < 100:  # a byte now and then, each well within the deadline, never the end
            client.send(b" ")
            await bounded()
            reads += 1
            await asyncio.sleep(0.05)
        return reads

    with pytest.raises(RequestTimeoutError):
        await trickle()


async def test_once_the_body_is_in_no_deadline_is_left_running() -> None:
    client = Trickle()
    body = _BoundedBody(client.receive, 0.05)
    client.send(b"{}", more=False)
    message = await body.receive()

    assert message["type"] == "http.request"
    assert message["body"] == b"{}"
    assert body._timer is not None
    assert body._timer.cancelled(), "the deadline outlived the body"
    client.pieces.put_nowait({"type": "http.disconnect"})
    assert (await body.receive())["type"] == "http.disconnect"
    assert body._timer.cancelled(), "a read after the body armed a deadline"


async def test_a_deadline_passed_between_two_reads_refuses_the_next_one() -> None:
    client = Trickle()
    bounded = _bounded(client.receive, 0.05)
    client.send(b"{")
    await bounded()
    await asyncio.sleep(0.2)  # the application works on the first piece meanwhile
    client.send(b"}", more=False)

    with pytest.raises(RequestTimeoutError):
        await bounded()


async def test_a_cancelled_request_is_not_taken_for_a_late_body() -> None:
    client = Trickle()
    bounded = _bounded(client.receive, 60)
    reading = asyncio.ensure_future(bounded())
    await asyncio.sleep(0)
    reading.cancel()

    with pytest.raises(asyncio.CancelledError):
        await reading
