"""A small, low-noise HTTP/1.1 load generator: uvloop, a raw asyncio Protocol, httptools.

General-purpose clients (httpx, aiohttp) cost tens of microseconds per request in the client
itself, which would be charged to whichever server is measured. Here a request is one
``transport.write`` of pre-built bytes and the response is parsed by httptools' C parser, so the
client adds as little as possible and the same amount to Minato and to the direct baseline.

Every loop is bounded both by a request count and by a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import httptools

__all__ = [
    "Connection",
    "Pool",
    "Result",
    "Sample",
    "burst",
    "chat_request",
    "connect",
    "get_request",
    "percentile",
]

CONNECT_PARALLELISM: Final = 100  # connects in flight at once, so no SYN queue ever overflows
REQUEST_TIMEOUT_S: Final = 60.0


def get_request(port: int, target: str, headers: Mapping[str, str] | None = None) -> bytes:
    """Pre-built bytes of ``GET target`` on a keep-alive connection, with further ``headers``."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


def chat_request(port: int, model: str, *, stream: bool, path: str = "/api/chat") -> bytes:
    """Pre-built bytes of the ``POST /api/chat`` Minato itself sends for ``message=hi``.

    OpenAI's ``/v1/chat/completions`` reads the same three fields, so ``path`` can name it too.
    """
    flag = "true" if stream else "false"
    body = f'{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":{flag}}}'.encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(slots=True)
class Result:
    """One request's timings (``time.perf_counter`` seconds) and outcome."""

    started: float
    first_body: float
    finished: float
    status: int
    body_bytes: int

    @property
    def total(self) -> float:
        return self.finished - self.started

    @property
    def ttfb(self) -> float:
        """Time to the first byte of the *body* (for a stream: the first token)."""
        return self.first_body - self.started


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight.

    With ``keep_body`` the last response's body is kept in :attr:`body` (to read Minato's own pages,
    ``/metrics`` or ``/ready``); the load itself only counts bytes.
    """

    def __init__(self, *, keep_body: bool = False) -> None:
        self.body: bytearray | None = bytearray() if keep_body else None
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._done: asyncio.Future[None] | None = None
        self._started = 0.0
        self._first_body = 0.0
        self._body_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport implements asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(exc or ConnectionError("connection closed before the response was complete"))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        if not self._body_bytes:
            self._first_body = time.perf_counter()
        self._body_bytes += len(body)
        if self.body is not None:
            self.body += body

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- API ----------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    async def request(self, raw: bytes) -> Result:
        """Send ``raw`` and wait for the whole response; raise if the connection breaks."""
        if self._transport is None:
            raise ConnectionError("connection is closed")
        self._done = asyncio.get_running_loop().create_future()
        self._body_bytes = 0
        self._first_body = 0.0
        if self.body is not None:
            self.body.clear()
        self._started = time.perf_counter()
        self._transport.write(raw)
        await self._done
        finished = time.perf_counter()
        first = self._first_body or finished
        return Result(self._started, first, finished, self._parser.get_status_code(), self._body_bytes)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(port: int, *, keep_body: bool = False) -> Connection:
    _, protocol = await asyncio.get_running_loop().create_connection(
        lambda: Connection(keep_body=keep_body), "127.0.0.1", port
    )
    return protocol


async def connect_many(port: int, count: int) -> list[Connection]:
    """Open ``count`` connections, at most :data:`CONNECT_PARALLELISM` at a time."""
    gate = asyncio.Semaphore(CONNECT_PARALLELISM)

    async def one() -> Connection:
        async with gate:
            return await connect(port)

    return list(await asyncio.gather(*(one() for _ in range(count))))


@dataclass
class Sample:
    """What one measured run produced."""

    results: list[Result] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.results)

    @property
    def rate(self) -> float:
        """Successful requests per second of wall time."""
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def totals(self) -> list[float]:
        return sorted(r.total for r in self.results)

    def ttfbs(self) -> list[float]:
        return sorted(r.ttfb for r in self.results)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` when there are none)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Pool:
    """``clients`` keep-alive connections, each sending its next request when the last ends.

    A closed loop: the offered load adapts to the server, so requests/s is its throughput and
    the latencies are those of a saturated (32 clients) or idle (1 client) server.
    """

    def __init__(self, connections: list[Connection]) -> None:
        self.connections = connections

    @classmethod
    async def open(cls, port: int, clients: int) -> Pool:
        return cls(await connect_many(port, clients))

    async def warm(self, raw: bytes, per_client: int, max_seconds: float) -> None:
        """Send a few unmeasured requests: first-call costs (imports, caches, pools) happen here."""
        await self.run(raw, max_seconds, per_client * len(self.connections))

    async def run(self, raw: bytes, seconds: float, max_requests: int) -> Sample:
        """Keep every connection busy for ``seconds`` or until ``max_requests`` were sent."""
        sample = Sample()
        deadline = time.perf_counter() + seconds
        budget = max_requests

        async def client(conn: Connection) -> None:
            nonlocal budget
            while budget > 0 and time.perf_counter() < deadline:
                budget -= 1
                try:
                    result = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
                except (ConnectionError, TimeoutError, httptools.HttpParserError):
                    sample.errors += 1
                    return  # this connection is unusable now; the others go on
                if result.status == 200:
                    sample.results.append(result)
                else:
                    sample.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in self.connections))
        sample.elapsed = time.perf_counter() - started
        return sample

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


async def burst(port: int, raw: bytes, clients: int, timeout_s: float, ramp_s: float = 0.0) -> Sample:
    """Open ``clients`` connections, then send one request on each at the same moment.

    With ``ramp_s`` the clients arrive evenly spread over that many seconds instead, each opening
    its connection when it arrives (a connection opened long before its request would meet the
    server's deadline for a request head). Each completion time is measured from that request's
    own write. Whatever has not finished ``timeout_s`` after the last arrival counts as an error,
    like a refused connection or a non-200 status.
    """
    gate = asyncio.Semaphore(CONNECT_PARALLELISM)
    connections: list[Connection] = []

    async def one() -> Connection:
        async with gate:
            conn = await connect(port)
        connections.append(conn)
        return conn

    async def arrive(delay_s: float) -> Result:
        await asyncio.sleep(delay_s)
        return await (await one()).request(raw)

    sample = Sample()
    if ramp_s > 0:
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(arrive(i * ramp_s / clients)) for i in range(clients)]
    else:
        opened = await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=True)
        sample.errors = sum(1 for c in opened if not isinstance(c, Connection))  # a refused connection
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(conn.request(raw)) for conn in connections]
    done, pending = await asyncio.wait(tasks, timeout=ramp_s + timeout_s)
    sample.elapsed = time.perf_counter() - started
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)  # so that no connection opens after the close below
    sample.errors += len(pending)
    for task in done:
        if task.exception() is not None:
            sample.errors += 1
            continue
        result = task.result()
        if result.status == 200 and result.body_bytes > 0:
            sample.results.append(result)
        else:
            sample.errors += 1
    for conn in connections:
        conn.close()
    return sample
