"""An httpx transport that moves the bytes with aiohttp.

httpx is the interface (so respx can stand in for Ollama in the unit tests); aiohttp does the
work, because its C parser and connection pool cost a fraction of httpx's pure-Python h11 path on
this service's hot path (measured: see docs/benchmarks.md). Streams expose :meth:`AiohttpBody.read_some`
so the relay can read straight from aiohttp's buffer, without httpx's per-chunk iterator layers.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import httpx

#: Never send these automatically; Ollama needs none of them and they cost bytes on every call.
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept-Encoding")
_ERRNO_PROBLEMS: Final = {
    errno.ECONNREFUSED: "the connection was refused",
    errno.ECONNRESET: "the connection was reset",
    errno.ECONNABORTED: "the connection was aborted",
    errno.EHOSTUNREACH: "the host is unreachable",
    errno.ENETUNREACH: "the network is unreachable",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EADDRNOTAVAIL: "the address is not available",
}
_MAX_CAUSES: Final = 8


def connection_problem(exc: BaseException, host: str) -> str:
    """Say in plain words why a connection to ``host`` failed, from the exception and its causes.

    The library's own text (aiohttp's ``Cannot connect to host ... ssl:default [...]``) is for the
    log; this is the sentence a client may read.
    """
    current: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if current is None:
            break
        if isinstance(current, socket.gaierror | aiohttp.ClientConnectorDNSError):
            return f"cannot resolve host {host}"
        if isinstance(current, ssl.SSLError | aiohttp.ClientSSLError):
            return "the TLS handshake failed"
        if isinstance(current, OSError) and current.errno in _ERRNO_PROBLEMS:
            return _ERRNO_PROBLEMS[current.errno]
        current = current.__cause__ or current.__context__
    return "the connection failed"


class AiohttpBody(httpx.AsyncByteStream):
    """The body of an aiohttp response, as an httpx stream."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._reader = response.content

    async def read_some(self) -> bytes:
        """Return the bytes that have arrived (waiting for some), or ``b""`` at the end."""
        try:
            return await self._reader.readany()
        except aiohttp.ClientPayloadError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "incomplete body") from exc
        except aiohttp.ClientConnectionError as exc:
            raise httpx.ReadError(str(exc) or "connection lost") from exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while data := await self.read_some():
            yield data

    async def aclose(self) -> None:
        """Return a fully read connection to the pool; close one that is not, so Ollama sees us go."""
        if self._reader.at_eof():
            self.response.release()
        else:
            self.response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp connection pool behind httpx's transport interface."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds the session to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_expiry
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,  # proxy variables meant for the internet must not reroute calls to a local daemon
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with aiohttp and wrap the answer (body still unread) as an httpx response."""
        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "server disconnected", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.NetworkError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=AiohttpBody(response),
            request=request,
        )

    async def aclose(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None
