"""Logging: structlog configured once, and one canonical line per request.

Prompts, images and query strings are never logged: the query string carries the user's message.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, HTTPScope, Message, Receive, Scope, Send

from minato.observability.logging import AccessLog, log_request
from minato.observability.record import CURRENT_RECORD, RECORD_KEY, RequestRecord

if TYPE_CHECKING:
    from minato.observability.metrics import Metrics

#: nginx's status for a request whose client closed the connection before the answer was complete.
CLIENT_CLOSED_REQUEST: Final = 499
#: The route label of every request that matched no route: the raw path would be an unbounded label.
UNMATCHED_ROUTE: Final = "unmatched"
#: How much of a path that matched no route its log line carries.
LOGGED_PATH_CHARS: Final = 256
REQUEST_ID_HEADER: Final = b"x-request-id"
#: Scope state key: the server's own ``send``. The layers between it and a handler (this middleware,
#: Litestar's error handling) only watch a response's start, so a stream writes its body chunks
#: straight to it: two coroutine calls fewer per token.
BODY_SEND_KEY: Final = "minato.body_send"
_VALID_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")

#: Sees a response head (and may add headers) before it leaves.
OnHead = Callable[[Scope, HTTPResponseStartEvent], None]


@dataclass(slots=True, eq=False)
class RequestLogMiddleware:
    """Outermost ASGI layer: request id in and out, one log line per request.

    It wraps the whole Litestar handler stack (routing errors included) so the line carries the
    status the client really got, and it only writes the line once the body has been sent, so a
    stream's duration covers the whole stream.

    ``on_head`` sees every response head before it leaves (the app adds the limit and timing headers
    there: :func:`minato.web.limit_headers.add_limit_headers`); one wrapper of ``send`` for both, as a
    layer of its own would cost an ASGI hop per request.

    ``access`` writes the line (:func:`~minato.observability.logging.configure_logging` says how: directly
    for JSON, through structlog otherwise; ``None``: info is not logged, no line is built).
    """

    app: ASGIApp
    metrics: Metrics | None = None
    on_head: OnHead | None = None
    access: AccessLog | None = log_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        await self.serve_http(scope, receive, send)

    async def serve_http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request and log it."""
        started = time.perf_counter()
        request_id = _request_id(scope)
        record = RequestRecord(request_id, started)
        state = scope.setdefault("state", {})
        state[RECORD_KEY] = record
        state[BODY_SEND_KEY] = send
        # Lines logged during the request take its id (and its key's name) from the record.
        current = CURRENT_RECORD.set(record)
        status = 0
        header = (REQUEST_ID_HEADER, request_id.encode())

        metrics = self.metrics
        on_head = self.on_head
        in_flight = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, in_flight
            if message["type"] == "http.response.start":
                status = message["status"]
                if on_head is not None:
                    on_head(scope, message)
                message["headers"] = [*message.get("headers", ()), header]
                if record.streaming and metrics is not None:
                    metrics.streams_in_flight.inc()
                    in_flight = True
            await send(message)

        aborted = False
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            aborted = True
            raise
        finally:
            seconds = time.perf_counter() - started
            if record.client_gone:
                status, aborted = CLIENT_CLOSED_REQUEST, True
            outcome = "aborted" if aborted else outcome_of(status, record)
            template = scope.get("path_template")
            access = self.access
            if access is not None:
                # A path no route matched is the client's text, as long as it liked: a prefix is enough.
                route = template or scope["path"][:LOGGED_PATH_CHARS]
                access(scope["method"], route, status or None, outcome, round(seconds * 1000, 3), record)
            if metrics is not None:
                if in_flight:
                    metrics.streams_in_flight.dec()
                metrics.observe(template or UNMATCHED_ROUTE, scope["method"], status, seconds, record)
            CURRENT_RECORD.reset(current)


#: Statuses that refuse a caller (no key, a key that may not, a limit reached): not the client's mistake
#: in the request itself, and the first thing to look for when a key "does not work".
_REFUSALS: Final = frozenset({401, 403, 429})


def outcome_of(status: int, record: RequestRecord) -> str:
    """How a request ended, in one word for the log line: ``ok``, ``refused`` (401, 403, 429),
    ``client_error`` (another 4xx), ``upstream_error`` (Ollama failed, also in the middle of a stream that
    began with a 200) or ``error`` (another 5xx)."""
    if record.upstream_error is not None:
        return "upstream_error"
    if status < 400:
        return "ok"
    if status in _REFUSALS:
        return "refused"
    return "client_error" if status < 500 else "error"


def _request_id(scope: HTTPScope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.fullmatch(value):
            return value.decode()
    # The same 32 hex digits as uuid4().hex, without building a UUID: a tenth of its cost.
    return os.urandom(16).hex()
