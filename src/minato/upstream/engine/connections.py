"""Keep-alive connections to Ollama, pooled per backend (scheme, host, port).

Each backend has a :class:`HostPool`: at most ``limit`` connections open (in use or idle), the idle ones
reused last-in first-out (the warmest socket first), closed after ``idle_expiry`` seconds unused (one
timer per host pool, not per connection), and requests beyond the bound waiting their turn in order. A reused
connection that closes before any byte of its answer (Ollama dropped it while idle) is replaced by a
fresh one, once. Failures to connect become Minato's sentences here, once (:mod:`minato.upstream.failures`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from minato.errors import OllamaTimeoutError
from minato.upstream.engine.exchange import Exchange, StaleConnectionError
from minato.upstream.engine.protocol import Connection
from minato.upstream.failures import connect_error, lost_before_answer

#: Seconds an idle keep-alive connection is kept for reuse.
IDLE_EXPIRY: Final = 30.0


class Origin(NamedTuple):
    """Where a backend listens, and how its requests name it."""

    scheme: str
    host: str
    port: int
    prefix: str
    """The URL's path, before every request's own (an Ollama behind a path on a reverse proxy)."""
    authority: str
    """The ``Host`` header: the URL's host, and its port when the URL names one."""

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of a backend's base URL."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if scheme == "https" else 80)
        authority = parts.netloc.rpartition("@")[2] or host
        return cls(scheme, host, port, parts.path.rstrip("/"), authority)


class HostPool:
    """One backend's connections (see the module's description)."""

    __slots__ = ("_sweep", "idle", "open", "origin", "owner", "waiters")

    def __init__(self, owner: Connections, origin: Origin) -> None:
        self.owner = owner
        self.origin = origin
        self.idle: list[Connection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None

    async def acquire(self, fresh: bool, ollama_url: str) -> Connection:
        """A connection of this backend: an idle one (unless ``fresh``), a new one within the bound, or
        the next one given back when the bound is reached."""
        idle = self.idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.transport.is_closing():
                conn.reused = True
                return conn
        if fresh and idle and self.open >= self.owner.limit:
            coldest = idle.pop(0)  # room for the fresh one: the coldest idle connection goes
            coldest.counted = False
            coldest.transport.close()
            self.open -= 1
        if self.open < self.owner.limit:
            return await self._connect(ollama_url)
        waiter: asyncio.Future[Connection | None] = self.owner.loop.create_future()
        self.waiters.append(waiter)
        try:
            given = await waiter
        except BaseException:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())  # handed over as this wait was cancelled: pass it on
            raise
        if given is None:
            return await self._connect(ollama_url)  # a connection closed: its place is this request's
        given.reused = True
        return given

    async def _connect(self, ollama_url: str) -> Connection:
        owner = self.owner
        origin = self.origin
        loop = owner.loop
        self.open += 1
        try:
            async with asyncio.timeout(owner.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop),
                    origin.host,
                    origin.port,
                    ssl=owner.tls() if origin.scheme == "https" else None,
                )
        except BaseException as exc:
            self.open -= 1
            self._give_back(None)
            if isinstance(exc, OSError):  # TimeoutError included: no connection within connect_timeout
                raise connect_error(exc, ollama_url, owner.connect_timeout) from None
            raise
        conn.counted = True
        return conn

    def release(self, conn: Connection) -> None:
        """A connection whose exchange completed: to the first waiter, else to the idle list."""
        conn.reused = False
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.owner.loop.time()
        self.idle.append(conn)
        if self._sweep is None:
            self._sweep = self.owner.loop.call_at(conn.idle_since + self.owner.idle_expiry, self._expire)

    def lost(self, conn: Connection) -> None:
        """A connection closed: its place is free for a waiter (one whose connect did not complete gave
        its place back already)."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self.open -= 1
            self._give_back(None)

    def _give_back(self, conn: Connection | None) -> None:
        if conn is not None:
            self.release(conn)
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Close the connections idle longer than the expiry; come back when the next one will be."""
        self._sweep = None
        loop = self.owner.loop
        cutoff = loop.time() - self.owner.idle_expiry
        idle = self.idle
        while idle and idle[0].idle_since <= cutoff:
            idle.pop(0).transport.close()  # connection_lost frees its place
        if idle:
            self._sweep = loop.call_at(idle[0].idle_since + self.owner.idle_expiry, self._expire)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self.idle:
            self.idle.pop().transport.close()


class Connections:
    """Every backend's connections (see the module's description); made on the event loop that uses it."""

    def __init__(self, *, limit: int, connect_timeout: float, idle_expiry: float = IDLE_EXPIRY) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.idle_expiry = idle_expiry
        self._pools: dict[Origin, HostPool] = {}
        self._tls: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def tls(self) -> ssl.SSLContext:
        """The TLS settings of ``https://`` backends: the system's trusted roots, the host name checked."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def host_pool(self, origin: Origin) -> HostPool:
        """The connections of one backend."""
        host_pool = self._pools.get(origin)
        if host_pool is None:
            host_pool = self._pools[origin] = HostPool(self, origin)
        return host_pool

    async def exchange(
        self,
        origin: Origin,
        request: bytes,
        *,
        ollama_url: str,
        headers_within: float,
        late: str,
        idle_timeout: float,
        whole_within: float | None = None,
    ) -> Exchange:
        """Send ``request`` (its bytes whole: request line, headers, body) to ``origin``; return the
        exchange once Ollama's status and headers arrived, within ``headers_within`` seconds (else
        :class:`~minato.errors.OllamaTimeoutError` with the sentence ``late``)."""
        host_pool = self.host_pool(origin)
        loop = self.loop
        started = loop.time()
        for fresh in (False, True):
            conn = await self._acquire(host_pool, fresh, started + headers_within, late, ollama_url)
            exchange = Exchange(
                conn,
                ollama_url,
                started,
                headers_within=headers_within,
                late=late,
                idle_timeout=idle_timeout,
                whole_within=whole_within,
                head_only=request.startswith(b"HEAD "),
            )
            conn.begin(exchange, request)
            try:
                await exchange.answered()
            except StaleConnectionError:
                if fresh:
                    break
                continue
            return exchange
        raise lost_before_answer(None, ollama_url)

    async def _acquire(
        self, host_pool: HostPool, fresh: bool, deadline: float, late: str, ollama_url: str
    ) -> Connection:
        if host_pool.open < self.limit or host_pool.idle:
            return await host_pool.acquire(fresh, ollama_url)
        try:
            async with asyncio.timeout_at(deadline):  # waiting for a place counts against the headers' time
                return await host_pool.acquire(fresh, ollama_url)
        except TimeoutError:
            raise OllamaTimeoutError(late) from None

    def close(self) -> None:
        """Close every idle connection (those in use close with their exchanges)."""
        for host_pool in self._pools.values():
            host_pool.close()

    async def aclose(self) -> None:
        """Close every idle connection, and let the transports finish closing."""
        self.close()
        await asyncio.sleep(0)
