"""The slow-reader part: one client reads a 100,000-token answer 10x slower than Ollama writes it.

The answer (about 10 MB of NDJSON) is asked on the native door, ``POST /api/chat`` streamed, so the
client's bytes are Ollama's. The client reads at a tenth of the rate it reads the same answer from
the stand-in directly (it stops reading its socket until its budget allows more, so the kernel's
buffers fill as they would behind a slow network). A relay that keeps flow control lets its buffer
towards the client fill, stops reading Ollama, and Ollama's send buffer fills: the stand-in shows
each stream's bytes its socket could not send yet (``GET /_standin/streams``, polled during the
read). A relay that reads Ollama regardless holds the answer in memory instead: its RSS grows by up
to the answer's size, and the stand-in's socket never fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Final, cast

import httptools
import httpx

from bench.common import MB, NATIVE_CHAT, SHORT_MODEL, Plan, log, peak_rss, standin_process
from bench.load import chat_request
from bench.processes import Server, rss_bytes, run_floor_relay, run_minato
from bench.report import Row

__all__ = ["SlowRead", "read_at", "slow_reader_rows"]

TOKENS: Final = 100_000
MODEL: Final = f"standin/tokens:{TOKENS}"
SLOWDOWN: Final = 10.0
MAX_READ_S: Final = 60.0  # a machine so slow that the direct read takes over 6 s reads faster than 1/10
TIMEOUT_S: Final = 3 * MAX_READ_S
TARGET_GROWTH_MB: Final = 2.0
WATCH_S: Final = 0.05  # how often the stand-in's streams are looked at during the read


class _Reader(asyncio.Protocol):
    """A client that reads one response at ``rate`` bytes a second at most (``None``: as fast as it can)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.transport = cast(asyncio.Transport, None)
        self.started = 0.0
        self.received = 0
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            return
        if self.rate is not None and not self.done.done():
            # Ahead of the budget: stop reading the socket until it allows what was read.
            delay = self.started + self.received / self.rate - self.loop.time()
            if delay > 0:
                self.transport.pause_reading()
                self.loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed before the answer was complete"))

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass(frozen=True)
class SlowRead:
    """One answer read: its status, its body's size and how long it took."""

    status: int
    body_bytes: int
    seconds: float


async def read_at(port: int, raw: bytes, rate: float | None, timeout_s: float = TIMEOUT_S) -> SlowRead:
    """Send ``raw`` on a new connection and read the answer at ``rate`` bytes a second at most."""
    loop = asyncio.get_running_loop()
    transport, reader = await loop.create_connection(lambda: _Reader(rate), "127.0.0.1", port)
    try:
        reader.started = loop.time()
        started = time.perf_counter()
        transport.write(raw)
        await asyncio.wait_for(reader.done, timeout_s)
        return SlowRead(reader.parser.get_status_code(), reader.body_bytes, time.perf_counter() - started)
    finally:
        transport.close()


@dataclass(frozen=True)
class _Seen:
    """One subject's slow read: the read, its RSS before and at the peak, and what the stand-in's socket
    could not send: the largest amount seen, and the share of looks that found some."""

    read: SlowRead | None
    rss_before: int
    rss_peak: int
    unsent_peak: int
    full_share: float


async def _watch(standin: httpx.AsyncClient, stop: asyncio.Event) -> tuple[int, float]:
    """Look at the stand-in's streams every :data:`WATCH_S` until ``stop``: (most unsent bytes, share of
    looks with some)."""
    looks = full = peak = 0
    while not stop.is_set():
        streams = (await standin.get("/_standin/streams")).json()
        unsent = max((stream["write_buffered"] for stream in streams), default=0)
        looks, full, peak = looks + 1, full + (unsent > 0), max(peak, unsent)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_S)
    return peak, full / looks if looks else 0.0


async def _slow_read(standin: httpx.AsyncClient, server: Server, rate: float) -> _Seen:
    # First-call costs (imports, the pool's first connection) outside the measured read.
    await read_at(server.port, chat_request(server.port, SHORT_MODEL, stream=True), None)
    before = rss_bytes(server.pid)
    read: SlowRead | None = None
    stop = asyncio.Event()
    watching = asyncio.create_task(_watch(standin, stop))
    try:
        async with peak_rss(server.pid) as peak:
            with contextlib.suppress(ConnectionError, TimeoutError, httptools.HttpParserError):
                raw = chat_request(server.port, MODEL, stream=True, path=NATIVE_CHAT)
                read = await read_at(server.port, raw, rate)
    finally:
        stop.set()
        unsent, share = await watching
    return _Seen(read, before, peak[0], unsent, share)


def _rows(scenario: str, name: str, seen: _Seen, direct: SlowRead, *, held: bool) -> list[Row]:
    growth = (seen.rss_peak - seen.rss_before) / MB
    complete = seen.read is not None and seen.read.status == 200 and seen.read.body_bytes >= 0.9 * direct.body_bytes
    read_s = seen.read.seconds if seen.read is not None else float("nan")
    rows = [
        Row(scenario, f"{name}: read time", read_s, "s", direct.seconds),
        Row(scenario, f"{name}: RSS before", seen.rss_before / MB, "MB"),
        Row(
            scenario,
            f"{name}: RSS growth during the read (peak - before)",
            growth,
            "MB",
            target=f"< {TARGET_GROWTH_MB:g} MB" if held else "",
            passed=growth < TARGET_GROWTH_MB if held else None,
        ),
        Row(
            scenario,
            f"{name}: the stand-in's unsent bytes, most seen (its send buffer full)",
            seen.unsent_peak / MB,
            "MB",
            target="> 0: the pause reached Ollama" if held else "",
            passed=seen.unsent_peak > 0 if held else None,
        ),
        Row(scenario, f"{name}: share of the read the stand-in's send buffer was full", seen.full_share, "ratio"),
    ]
    if not complete:
        rows.append(Row(scenario, f"{name}: answer incomplete", 1, "count", target="0", passed=False if held else None))
    return rows


async def slow_reader_rows(plan: Plan) -> list[Row]:
    """The floor relay, then Minato (log level warning), each read by one slow client; the stand-in is
    their own and fresh, so its socket buffers have not grown on earlier rows' traffic."""
    scenario = f"a slow reader: one {TOKENS:,}-token answer (native POST /api/chat) read {SLOWDOWN:g}x slower"
    with contextlib.ExitStack() as stack:
        standin = standin_process(stack)
        port = int(standin.url.rpartition(":")[2])
        log(f"{scenario}: direct, read as fast as it comes")
        direct = await read_at(port, chat_request(port, MODEL, stream=True), None)
        if direct.status != 200:
            raise RuntimeError(f"the stand-in answered {direct.status} to {MODEL}")
        rate = max(direct.body_bytes / direct.seconds / SLOWDOWN, direct.body_bytes / MAX_READ_S)
        log(
            f"{scenario}: {direct.body_bytes / MB:.1f} MB in {direct.seconds:.2f} s; slow reads at {rate / MB:.2f} MB/s"
        )
        floor = stack.enter_context(run_floor_relay(standin.url))
        minato = stack.enter_context(run_minato(standin.url, "warning"))
        async with httpx.AsyncClient(base_url=standin.url) as client:
            rows: list[Row] = []
            for name, server, held in (("floor relay", floor, False), ("Minato", minato, True)):
                log(f"{scenario}: {name}")
                rows += _rows(scenario, name, await _slow_read(client, server, rate), direct, held=held)
    return [Row(scenario, "direct: answer size", direct.body_bytes / MB, "MB"), *rows]
