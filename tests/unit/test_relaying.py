"""The direct relay's driver: a source's chunks transformed and written to the lane from the data callback,
flow control both ways, and one future for the request's task, settled once however the body ends.

The source and the lane here are plain recorders of the two protocols (the engine's and the server's
own sides are tested against real sockets in tests/unit/test_lane.py and tests/e2e/test_relay.py)."""

from __future__ import annotations

import asyncio

import pytest

from minato.errors import OllamaConnectionLostError
from minato.upstream.sink import Sink
from minato.web.lane import LaneListener
from minato.web.relaying import LaneRelay, relay_directly

pytestmark = pytest.mark.anyio


class Source:
    """A body the test hands out piece by piece; it records what the relay asked of it."""

    def __init__(self, arrived: list[bytes]) -> None:
        self.arrived = arrived
        self.sink: Sink | None = None
        self.calls: list[str] = []
        self.attached = asyncio.Event()

    def attach(self, sink: Sink) -> None:
        self.sink = sink
        self.attached.set()
        for chunk in self.arrived:
            sink.data(chunk)

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def close(self) -> None:
        self.calls.append("close")


class Lane:
    """A client socket that keeps what is written to it."""

    def __init__(self, *, paused: bool = False) -> None:
        self.written: list[bytes] = []
        self.listener: LaneListener | None = None
        self.paused = paused

    def write(self, chunk: bytes) -> None:
        self.written.append(chunk)

    @property
    def gone(self) -> bool:
        return False

    def listen(self, listener: LaneListener | None) -> None:
        self.listener = listener
        if listener is not None and self.paused:
            listener.pause()


class Upper:
    """A transform: the chunk in capitals; over once it sees ``END``."""

    def __init__(self) -> None:
        self.over = False

    def feed(self, chunk: bytes) -> bytes:
        self.over = b"END" in chunk
        return chunk.upper()


async def _relay_in_background(lane: Lane, source: Source, transform: Upper) -> asyncio.Task[LaneRelay]:
    task = asyncio.get_running_loop().create_task(relay_directly(lane, source, transform))
    await source.attached.wait()
    return task


async def test_what_arrived_before_the_attach_and_each_later_chunk_are_written_at_once() -> None:
    lane, source = Lane(), Source([b"one ", b"two "])
    task = await _relay_in_background(lane, source, Upper())
    assert lane.written == [b"ONE ", b"TWO "]
    assert source.sink is not None
    source.sink.data(b"three")
    assert lane.written[-1] == b"THREE", "written from the data callback, before the task runs again"
    assert not task.done()
    source.sink.end()
    relay = await task
    assert relay.ended
    assert lane.listener is None, "the lane has nobody to tell once the relay ended"


async def test_the_client_buffer_pauses_and_resumes_ollama() -> None:
    lane, source = Lane(paused=True), Source([])
    task = await _relay_in_background(lane, source, Upper())
    assert source.calls == ["pause"], "a lane already over its high-water mark pauses the source at once"
    assert lane.listener is not None
    lane.listener.resume()
    lane.listener.pause()
    assert source.calls == ["pause", "resume", "pause"]
    assert source.sink is not None
    source.sink.end()
    await task


async def test_a_client_that_leaves_closes_the_source_and_ends_the_wait() -> None:
    lane, source = Lane(), Source([b"a"])
    task = await _relay_in_background(lane, source, Upper())
    assert lane.listener is not None
    lane.listener.gone()
    relay = await task
    assert relay.left
    assert source.calls == ["close"]
    assert source.sink is not None
    source.sink.data(b"late")  # a sink call racing the close writes nothing
    assert lane.written == [b"A"]


async def test_a_transform_that_is_over_closes_the_source() -> None:
    lane, source = Lane(), Source([b"a", b"END", b"never"])
    relay = await relay_directly(lane, source, Upper())
    assert lane.written == [b"A", b"END"]
    assert source.calls == ["close"]
    assert not relay.ended
    assert relay.failure is None


async def test_a_failing_body_settles_the_wait_with_its_error() -> None:
    lane, source = Lane(), Source([])
    task = await _relay_in_background(lane, source, Upper())
    assert source.sink is not None
    error = OllamaConnectionLostError("the stream from Ollama broke off before it was complete")
    source.sink.fail(error)
    relay = await task
    assert relay.failure is error


async def test_a_cancelled_request_closes_the_source() -> None:
    lane, source = Lane(), Source([])
    task = await _relay_in_background(lane, source, Upper())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.calls == ["close"]
