"""Bounds on client connections: a deadline for each request head, a cap on open connections, and
request targets of any length answered by Minato.

uvicorn's httptools protocol only times out a connection that sits idle after a response: one that
never completes its first request head, or trickles header lines, is kept for ever, and nothing
bounds how many connections are open, so idle sockets can exhaust the process's file descriptors
and starve every client. :class:`BoundedHttpToolsProtocol` adds both bounds at the protocol level,
before any application work, and logs when they bite without writing one line per connection.

It also keeps a request target's length from deciding who answers: httptools' URL parser refuses a
target over 64 KiB (its offsets are 16-bit), which uvicorn answered with a plain-text 400 before
Minato saw the request, below the default ``MINATO_MAX_QUERY_CHARS``. The protocol splits such a target
itself, and keeps at most what :mod:`minato.web.limits` needs to see, so the application's limits answer
every long target: Minato's JSON 414 with a request id, logged like any request.
"""

from __future__ import annotations

import asyncio
import functools
import resource
from typing import Any, Final

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from minato.server.lane import CycleLane, HeldHead
from minato.settings import Settings
from minato.web.lane import LANE_EXTENSION
from minato.web.limits import longest_request_target
from minato.web.rendering import error_body

LOG_WINDOW: Final = 10.0
"""Seconds one summary line covers while a bound keeps biting."""
RESERVED_FILES: Final = 64
"""Descriptors left for the listening socket, the session store, logs and the like."""
MIN_AUTOMATIC_CAP: Final = 16
PARSER_URL_LIMIT: Final = (1 << 16) - 1
"""Longest request target httptools' URL parser takes (``http_parser_url`` holds 16-bit offsets)."""

logger = structlog.get_logger("minato.http")


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (each connection is a descriptor); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        # macOS reports an unlimited hard limit that setrlimit refuses; the soft one still holds.
        return soft
    return hard


def automatic_connection_cap(open_file_limit: int) -> int:
    """Client connections one worker may hold within ``open_file_limit`` descriptors.

    Half of what is left after a reserve, because each streamed request also holds a connection
    to Ollama.
    """
    if open_file_limit == resource.RLIM_INFINITY:
        open_file_limit = 1 << 20
    return max(MIN_AUTOMATIC_CAP, (open_file_limit - RESERVED_FILES) // 2)


class BoundLog:
    """A warning the first time a bound bites, then at most one line per window while it keeps biting.

    An attack of 20,000 connections thus writes a handful of lines, each with the ``count`` of
    connections it stands for, instead of 20,000.
    """

    def __init__(self, event: str, window: float = LOG_WINDOW, **fields: object) -> None:
        self.event = event
        self.window = window
        self.fields = fields
        self.pending = 0
        """Hits since the last line, to be written when the window ends."""
        self.window_open = False

    def hit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Note that the bound bit once."""
        if self.window_open:
            self.pending += 1
            return
        self.window_open = True
        logger.warning(self.event, count=1, **self.fields)
        loop.call_later(self.window, self._end_window, loop)

    def _end_window(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.pending:
            self.window_open = False
            return
        logger.warning(self.event, count=self.pending, window_s=self.window, **self.fields)
        self.pending = 0
        loop.call_later(self.window, self._end_window, loop)


class ConnectionGuard:
    """The two bounds of one worker process, the canned responses, and their log lines."""

    def __init__(self, header_timeout: float, max_connections: int, max_target: int = PARSER_URL_LIMIT) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.max_target = max_target
        """Bytes of a request target kept; the rest is dropped unread into memory (see :mod:`minato.web.limits`)."""
        self.timeouts = BoundLog("request_head_timeout", header_timeout=header_timeout)
        self.refusals = BoundLog("client_connection_refused", max_client_connections=max_connections)
        self.timeout_body = error_body(f"no complete request head within {header_timeout:g} s; connection closed")
        self.refusal_body = error_body(f"too many open connections (at most {max_connections}); try again shortly")

    @classmethod
    def from_settings(cls, settings: Settings, open_file_limit: int) -> ConnectionGuard:
        """Resolve ``max_client_connections = 0`` against the process's open-file limit."""
        cap = settings.max_client_connections or automatic_connection_cap(open_file_limit)
        return cls(settings.header_timeout, cap, longest_request_target(settings.max_query_chars))


@functools.cache
def process_guard() -> ConnectionGuard:
    """This worker's guard: every ``--workers`` process reads its own environment, as the app does."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ConnectionGuard.from_settings(Settings.from_env(), soft)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head and a cap on connections.

    The deadline runs from the moment the connection has nothing to do (just opened, or its last
    response finished) until a request head is complete; a head arriving behind a response still
    being sent (pipelining) gets its own deadline from its first byte. A connection idle between
    two requests is closed without a response, as uvicorn's keep-alive timeout does, so a client
    reusing it at that instant cannot take a 408 for the answer to its new request.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = process_guard()
        self.head_deadline: asyncio.TimerHandle | None = None
        self.head_begun = False
        self.heads = 0
        """Request heads completed on this connection (uvicorn's ``cycle`` is unset before the first)."""
        self.lane: CycleLane | None = None
        """The lane (:mod:`minato.server.lane`) of the request being answered, which hears of the
        transport's flow control and loss."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.guard.max_connections:
            self.guard.refusals.hit(self.loop)
            self._answer_and_close(503, self.guard.refusal_body, (b"retry-after", b"1"))
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)
        lane, self.lane = self.lane, None
        if lane is not None:
            lane.lost()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.lane is not None:
            self.lane.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.lane is not None:
            self.lane.resume()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every request gets its lane as its task starts (a pipelined one only once the response before
        # it is complete): the one lane of a connection that flow control and loss are told to.
        # The cycle writes through a transport that sends its head with the body's first bytes.
        held = HeldHead(self.transport, self.loop)
        cycle.transport = held  # type: ignore[assignment]  # the cycle calls write, close and is_closing only
        lane = self.lane = CycleLane(cycle, held, self.flow)
        cycle.scope.setdefault("extensions", {})[LANE_EXTENSION] = lane  # type: ignore[assignment]  # uvicorn types every extension as a dict
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_begun = True
        self._arm_head_deadline()

    def on_url(self, url: bytes) -> None:
        # Bytes past the cap are not kept: what is kept is already over a limit of minato.web.limits.
        room = self.guard.max_target - len(self.url)
        if room > 0:
            super().on_url(url[:room])

    def on_headers_complete(self) -> None:
        self.head_begun = False
        self.heads += 1
        self._disarm_head_deadline()
        if len(self.url) <= PARSER_URL_LIMIT or self.parser.should_upgrade():
            super().on_headers_complete()
            return
        # Too long for httptools' URL parser: it gets the path alone (cut to what it can take, which
        # is over Minato's path limit anyway), and the query goes into the scope here. The request's
        # task has been created but has not run yet, so it sees the whole scope.
        path, has_query, query = self.url.partition(b"#")[0].partition(b"?")
        self.url = path[:PARSER_URL_LIMIT]
        super().on_headers_complete()
        if has_query:
            self.scope["query_string"] = query

    def on_response_complete(self) -> None:
        lane, self.lane = self.lane, None
        if lane is not None:
            lane.done()
        super().on_response_complete()
        # Idle again, unless the response closed the connection or a pipelined request has started.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        if self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.guard.header_timeout, self._head_deadline_passed)

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_deadline_passed(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        if self.heads and not self.cycle.response_complete:
            # A pipelined head is trickling in behind a response: let the responses finish, then close.
            self.guard.timeouts.hit(self.loop)
            self.cycle.keep_alive = False
            return
        if self.heads and not self.head_begun:
            self.transport.close()
            return
        self.guard.timeouts.hit(self.loop)
        self._answer_and_close(408, self.guard.timeout_body)

    def _answer_and_close(self, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
        """Write a whole JSON response outside any request cycle, and close the connection."""
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(STATUS_LINE[status] + head + b"\r\n" + body)
        self.transport.close()
