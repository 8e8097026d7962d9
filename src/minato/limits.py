"""Bounds checked before Litestar sees a request: the length of the query string.

The query string carries the message, so an over-long one is refused before anything parses it;
the request is still logged, because this layer runs inside the request log.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from minato.rendering import error_body


class QueryLengthLimit:
    """A 414 for a query string longer than ``max_bytes`` (as sent, before decoding)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and len(scope["query_string"]) > self.max_bytes:
            await _refuse(send, 414, f"the query string is longer than {self.max_bytes} bytes")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = error_body(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
