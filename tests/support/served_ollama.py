"""The Ollama stand-in served in process, on a thread of its own, on a loopback socket, with per-test answers.

App tests point Minato at :attr:`ServedOllama.url`, so every exchange goes through Minato's production
transport (aiohttp, its connection pool, its body reader). A test that needs a canned answer adds a
route, in the small part of a mock router's vocabulary the tests use: ``ollama.post("/api/chat")
.respond(200, json=...)``, ``.mock(side_effect=...)``, ``route.called``, ``route.calls.last.request``.
A request no route matches is answered by the real stand-in (:mod:`tests.support.standin`).

A failure a test asks for happens on the wire: an exception as the answer (``side_effect=httpx.
ConnectError(...)``, a body stream that raises) drops the connection, so Minato sees what it would see
from a crashed Ollama (a ``ConnectionResetError`` resets it instead of closing it);
:meth:`ServedOllama.stall` holds a request until the client gives up; :meth:`ServedOllama.down` makes
the port refuse connections; :attr:`ServedOllama.tls_url` names it over TLS, which it does not speak.
The failures no server gives are addresses: :mod:`tests.support.wire_failures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from aiohttp import web

from tests.support.standin.server import Config, StandIn, body_of

START_TIMEOUT_S = 10.0

#: What a route may answer with: a response, or an exception that drops the connection.
Answer = httpx.Response | BaseException | type[BaseException]
SideEffect = (
    Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
    | BaseException
    | type[BaseException]
    | Iterable[Answer]
)


class Call(NamedTuple):
    """One request a route answered, as httpx sees a request (a mock router's ``Call``)."""

    request: httpx.Request
    response: httpx.Response | None


class Calls(list[Call]):
    """A route's calls in order; ``last`` is the most recent."""

    @property
    def last(self) -> Call:
        return self[-1]


@dataclass(eq=False)
class Route:
    """Requests matching ``method`` and ``path`` (exact, or ``path_regex``) get this route's answer."""

    methods: frozenset[str] | None
    path: str | None = None
    path_regex: re.Pattern[str] | None = None
    name: str | None = None
    calls: Calls = field(default_factory=Calls)
    _return: httpx.Response | None = None
    _side_effect: SideEffect | None = None
    _effects: Iterator[Answer] | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None and path != self.path:
            return False
        return self.path_regex is None or self.path_regex.search(path) is not None

    def same_pattern(self, other: Route) -> bool:
        return (self.methods, self.path, self.path_regex) == (other.methods, other.path, other.path_regex)

    def respond(
        self,
        status_code: int = 200,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        text: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Route:
        """Answer every matching request with this response."""
        return self.mock(
            return_value=httpx.Response(status_code, json=json, content=content, text=text, headers=headers)
        )

    def mock(self, return_value: httpx.Response | None = None, side_effect: SideEffect | None = None) -> Route:
        """Answer with ``side_effect`` (a function of the request, an exception, or answers in turn),
        else ``return_value``."""
        self._return, self._side_effect = return_value, side_effect
        is_sequence = isinstance(side_effect, Iterable) and not isinstance(side_effect, BaseException)
        self._effects = iter(side_effect) if is_sequence else None  # type: ignore[arg-type]
        return self

    @property
    def side_effect(self) -> SideEffect | None:
        return self._side_effect

    @side_effect.setter
    def side_effect(self, effect: SideEffect | None) -> None:
        self.mock(return_value=self._return, side_effect=effect)

    @property
    def return_value(self) -> httpx.Response | None:
        return self._return

    @return_value.setter
    def return_value(self, response: httpx.Response | None) -> None:
        self.mock(return_value=response, side_effect=self._side_effect)

    @property
    def called(self) -> bool:
        return bool(self.calls)

    @property
    def call_count(self) -> int:
        return len(self.calls)

    async def answer(self, request: httpx.Request) -> Answer:
        effect: Any = next(self._effects) if self._effects is not None else self._side_effect
        if effect is None:
            return self._return if self._return is not None else httpx.Response(200)
        if isinstance(effect, BaseException) or (isinstance(effect, type) and issubclass(effect, BaseException)):
            return effect
        if isinstance(effect, httpx.Response):
            return effect
        try:
            answer = effect(request)
            if isinstance(answer, Awaitable):
                answer = await answer
        except httpx.HTTPError as exc:  # a function raising a transport error: the same as returning it
            return exc
        return answer if answer is not None else (self._return or httpx.Response(200))


class Routes(list[Route]):
    """The routes in the order they were added; also by name (``ollama.routes["tags"]``)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return next(route for route in self if route.name == key)
        return super().__getitem__(key)


class ServedOllama:
    """The stand-in on ``127.0.0.1``, with the routes a test added answering first."""

    def __init__(self, config: Config | None = None, *, keep_alive: bool = True) -> None:
        self.standin = StandIn(config or Config())
        # Without keep-alive every answer says ``Connection: close``, so a client opens a new connection
        # for its next call: once the test takes this Ollama down, that call is refused for certain, not
        # failed on a kept connection whose close the client has not read yet.
        self.keep_alive = keep_alive
        self.routes = Routes()
        self.calls = Calls()
        self._stalled: list[asyncio.Event] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event
        self._server: web.Server
        self._site: web.TCPSite
        self.port = 0
        self.url = ""

    @property
    def host(self) -> str:
        """``host:port``, as Minato names a backend."""
        return self.url.removeprefix("http://")

    @property
    def tls_url(self) -> str:
        """This Ollama named over ``https://``: it answers a TLS handshake in plain HTTP, so the handshake fails."""
        return f"https://{self.host}"

    def reset(self) -> None:
        """Forget every call (a mock router's ``reset()``); the routes keep their answers."""
        self.calls.clear()
        for route in self.routes:
            route.calls.clear()

    # -- a mock router's vocabulary---------------------------------------------------------------

    def route(
        self,
        *,
        method: str | None = None,
        method__in: Iterable[str] | None = None,
        path: str | None = None,
        path__regex: str | None = None,
        path__startswith: str | None = None,
        name: str | None = None,
    ) -> Route:
        """A route for the pattern; one with the same pattern or name is replaced in place."""
        methods = frozenset([method]) if method else frozenset(method__in) if method__in else None
        if path__startswith is not None:
            path__regex = "^" + re.escape(path__startswith)
        regex = re.compile(path__regex) if path__regex else None
        route = Route(methods, path, regex, name)
        for index, existing in enumerate(self.routes):
            if existing.same_pattern(route) or (name is not None and existing.name == name):
                self.routes[index] = route
                return route
        self.routes.append(route)
        return route

    def get(self, path: str | None = None, *, path__regex: str | None = None, name: str | None = None) -> Route:
        return self.route(method="GET", path=path, path__regex=path__regex, name=name)

    def post(self, path: str | None = None, *, path__regex: str | None = None, name: str | None = None) -> Route:
        return self.route(method="POST", path=path, path__regex=path__regex, name=name)

    def delete(self, path: str | None = None, *, path__regex: str | None = None, name: str | None = None) -> Route:
        return self.route(method="DELETE", path=path, path__regex=path__regex, name=name)

    def __getitem__(self, name: str) -> Route:
        route: Route = self.routes[name]
        return route

    # -- serving -------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on a free loopback port, on a thread of its own: Litestar's test client runs the app
        in a portal thread and blocks the test's loop while a request is in flight."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="served-ollama", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S) or not self.url:
            raise RuntimeError("the served Ollama did not start")

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(START_TIMEOUT_S)

    def down(self) -> None:
        """Stop listening and close every connection: from now on Ollama refuses, as one not running does."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._go_down(), self._loop).result(START_TIMEOUT_S)

    async def _go_down(self) -> None:
        await self._site.stop()
        await self._server.shutdown(0.5)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        # As the stand-in's own process serves: Go's net/http never decodes a request's Content-Encoding.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None, auto_decompress=False)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        self._server = server
        self._site = web.TCPSite(runner, "127.0.0.1", 0)
        try:
            await self._site.start()
            host, self.port = runner.addresses[0][:2]
            self.url = f"http://{host}:{self.port}"
            ready.set()
            await self._done.wait()
        finally:
            for stalled in self._stalled:
                stalled.set()
            await runner.cleanup()

    def stall(self) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
        """A side effect that never answers (until the server stops): Minato's read timeout decides."""

        async def hold(_: httpx.Request) -> httpx.Response:
            released = asyncio.Event()
            self._stalled.append(released)
            await released.wait()
            return httpx.Response(503)

        return hold

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await body_of(request)
        seen = httpx.Request(
            request.method,
            # The path as it came on the wire (percent-escapes kept), as a mock transport recorded it.
            f"http://{request.host}{request.raw_path}",
            headers=list(request.raw_headers),
            content=body,
        )
        route = next((route for route in self.routes if route.matches(request.method, request.path)), None)
        if route is None:
            self.calls.append(Call(seen, None))
            answered = await self.standin.handle(request)
            if not self.keep_alive and not answered.prepared:
                answered.force_close()
            return answered
        # Recorded before it is answered: a stalled request has been called too.
        mine, everyone = len(route.calls), len(self.calls)
        route.calls.append(Call(seen, None))
        self.calls.append(Call(seen, None))
        answer = await route.answer(seen)
        if isinstance(answer, httpx.Response):
            route.calls[mine] = self.calls[everyone] = Call(seen, answer)
        if not isinstance(answer, httpx.Response):
            return _drop(request, reset=_is_reset(answer))
        return await _relay(request, answer, keep_alive=self.keep_alive)


def _is_reset(answer: BaseException | type[BaseException]) -> bool:
    return isinstance(answer, ConnectionResetError) or answer is ConnectionResetError


def _drop(request: web.BaseRequest, *, reset: bool = False) -> web.StreamResponse:
    """Close the connection without an answer: what Minato sees when Ollama dies mid-request.

    A FIN by default (the client sees "server disconnected" every time); with ``reset`` an RST, as a
    peer whose socket is torn down sends: lingering zero seconds makes the kernel reset, not close.
    """
    if request.transport is not None:
        sock = request.transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
        else:
            request.transport.close()
    raise asyncio.CancelledError  # aiohttp ends the handler quietly; nothing is written


async def _relay(request: web.BaseRequest, answer: httpx.Response, *, keep_alive: bool = True) -> web.StreamResponse:
    """Send ``answer``: whole, or piece by piece as its stream yields (a stream that raises drops the
    connection mid-body, as a crash would)."""
    skip = {"content-length", "transfer-encoding", "connection"}
    headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in skip]
    stream = answer.stream
    if isinstance(stream, httpx.ByteStream) or not isinstance(stream, httpx.AsyncByteStream):
        whole = web.Response(status=answer.status_code, body=answer.content)
        if not keep_alive:
            whole.force_close()
        for key, value in headers:
            whole.headers.add(key, value)
        return whole
    response = web.StreamResponse(status=answer.status_code)
    if not keep_alive:
        response.force_close()
    for key, value in headers:
        response.headers.add(key, value)
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for piece in _pieces(stream):
            await response.write(piece)
    except Exception:
        return _drop(request)
    await response.write_eof()
    return response


async def _pieces(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    try:
        async for piece in stream:
            yield piece
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()
