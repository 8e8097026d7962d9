"""Bounds checked before Litestar sees a request: the lengths of the path and of the query string.

The query string carries the message, so an over-long one is refused before anything parses it;
the request is still logged, because this layer runs inside the request log. The HTTP protocol
(:mod:`minato.httpserver`) keeps enough of every request target for these checks to see it whole
or to see it is too long, so every over-long target gets this layer's 414.
"""

from __future__ import annotations

from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from minato.rendering import error_body

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
            if len(scope.get("raw_path") or scope["path"].encode()) > MAX_PATH_BYTES:
                await _refuse(send, 414, f"the request path is longer than {MAX_PATH_BYTES} bytes")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = error_body(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
