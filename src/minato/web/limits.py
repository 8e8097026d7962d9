"""Bounds set before Litestar sees a request: the lengths of the path and of the query string, and
the time its body may take.

The query string carries the message, so an over-long one is refused before anything parses it;
the request is still logged, because these layers run inside the request log. The HTTP protocol
(:mod:`minato.server.httpserver`) keeps enough of every request target for these checks to see it whole
or to see it is too long, so every over-long target gets this layer's 414.
"""

from __future__ import annotations

import asyncio
import re
from array import array
from itertools import accumulate
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from minato.errors import RequestTimeoutError
from minato.web.rendering import error_body

#: The deepest nesting of arrays and objects Minato decodes. Ollama's own bodies nest a handful of levels
#: (a tool's JSON Schema a dozen or two); past CPython's recursion limit a decoder raises instead of
#: answering, so a body is measured before anything decodes it.
MAX_JSON_DEPTH: Final = 128
#: What is left of a JSON text once measured: quotes (to find its strings) and brackets.
_STRUCTURE: Final = b'"[]{}'
_NOT_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(_STRUCTURE)))
#: A string, once its escaped quotes are gone: its brackets are text, not nesting.
_STRING: Final = re.compile(rb'"[^"]*"')
#: Brackets as signed steps of depth.
_STEPS: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
#: Methods whose requests carry no body Minato reads: their ``receive`` is left alone (the hot GET path).
_BODILESS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_PATH_BYTES: Final = 8192
"""Longest accepted path, in bytes as sent: model names and session ids are short, and a proxy in front
(nginx's default ``large_client_header_buffers``) refuses longer request lines anyway."""


def longest_request_target(max_query_bytes: int) -> int:
    """Bytes of a request target the server keeps: the longest path, ``?``, the longest query and one
    more byte, so a target cut to this length still shows which limit it passes."""
    return MAX_PATH_BYTES + 1 + max_query_bytes + 1


class QueryLengthLimit:
    """A 414 for a query string longer than ``max_bytes`` (as sent, before decoding), or a path longer
    than :data:`MAX_PATH_BYTES`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            if len(scope["query_string"]) > self.max_bytes:
                await _refuse(send, 414, f"the query string is longer than {self.max_bytes} bytes")
                return
            raw_path = scope.get("raw_path") or scope["path"].encode()
            # Some ASGI servers (Litestar's test client) leave the query string in raw_path.
            if len(raw_path) > MAX_PATH_BYTES and len(raw_path.partition(b"?")[0]) > MAX_PATH_BYTES:
                await _refuse(send, 414, f"the request path is longer than {MAX_PATH_BYTES} bytes")
                return
        await self.app(scope, receive, send)


class BodyTimeout:
    """``MINATO_BODY_TIMEOUT`` on every body Minato reads, whichever route reads it and however.

    The deadline starts when the application first asks for the body, not when the request arrives:
    a vision upload is read only once its generation holds a slot, so one queued behind a busy GPU
    waits in TCP flow control, not against this clock. A body trickled in a byte at a time would
    otherwise hold a connection (and a slot of ``MINATO_MAX_CLIENT_CONNECTIONS``) for ever. Past the
    deadline the read raises :class:`~minato.errors.RequestTimeoutError`, a 408 in the route's own
    shape, and the connection is closed (the rest of the body is never read).
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] in _BODILESS:
            await self.app(scope, receive, send)
            return
        await self.app(scope, _bounded(receive, self.seconds), send)


def _bounded(receive: Receive, seconds: float) -> Receive:
    """``receive`` whose body messages must all arrive within ``seconds`` of the first ask."""
    return _BoundedBody(receive, seconds).receive


class _BoundedBody:
    """One request's body deadline: one timer for the whole body, armed at the first ask and cancelled
    once the body is in, so a small body (the usual case) costs one timer, not a timeout context per
    read. When it fires during a read, the reading task is cancelled and the read raises the 408;
    between two reads, the next read does."""

    __slots__ = ("_complete", "_expired", "_reader", "_receive", "_seconds", "_timer")

    def __init__(self, receive: Receive, seconds: float) -> None:
        self._receive = receive
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[object] | None = None
        self._complete = False
        self._expired = False

    def _expire(self) -> None:
        self._expired = True
        if self._reader is not None:
            self._reader.cancel()

    def _too_late(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request body did not arrive within {self._seconds:g} s (MINATO_BODY_TIMEOUT)",
            headers={"Connection": "close"},
        )

    def _has_expired(self) -> bool:
        return self._expired

    async def receive(self) -> ReceiveMessage:
        """The next message; a body message past the deadline raises the 408."""
        if self._complete:  # the body is in: what follows is the disconnect a stream listens for
            return await self._receive()
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self._seconds, self._expire)
        if self._has_expired():
            raise self._too_late()
        task = self._reader = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if task is None or not self._has_expired():
                raise
            task.uncancel()  # the timer's own cancellation ends here, as the 408
            raise self._too_late() from None
        finally:
            self._reader = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._complete = True
            self._timer.cancel()
        return message


def json_too_deep(raw: bytes) -> bool:
    """Whether the JSON in ``raw`` nests arrays and objects deeper than :data:`MAX_JSON_DEPTH`.

    Most bodies have fewer brackets than the limit in all, and are answered by counting them. The
    others are measured with C loops only (a hostile body is as large as a body may be): escaped
    backslashes and quotes dropped, then everything but quotes and brackets, then the strings; the
    deepest point is the largest running sum of the brackets' steps. Malformed JSON is left to the
    decoder to refuse.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    steps = array("b", _STRING.sub(b"", plain).translate(_STEPS))
    return max(accumulate(steps), default=0) > MAX_JSON_DEPTH


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = error_body(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
