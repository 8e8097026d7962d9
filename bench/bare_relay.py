"""The bare relay: the least a Litestar + aiohttp gateway in front of Ollama does, the benchmark's reference.

``GET /{model}?message=`` and ``GET /stream/{model}?message=`` ask Ollama's ``POST /api/chat`` as
Minato's own routes do; ``POST /api/chat`` is passed through. Whole answers are one ``Response``,
streams are relayed read by read. No auth, limits, metrics, logs or checks: what it costs is the
server, the framework and the client that any such gateway pays for.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

UPSTREAM = os.environ.get("BARE_RELAY_UPSTREAM", "http://127.0.0.1:11434") + "/api/chat"
HEADERS = {"Content-Type": "application/json"}
session: list[aiohttp.ClientSession] = []  # one, opened at start-up (its connector needs the loop)


def _body(model: str, message: str, *, stream: bool) -> bytes:
    messages = [{"role": "user", "content": message}]
    return msgspec.json.encode({"model": model.lstrip("/"), "messages": messages, "stream": stream})


async def _whole(body: bytes) -> Response[bytes]:
    async with session[0].post(UPSTREAM, data=body, headers=HEADERS) as answer:
        return Response(await answer.read(), status_code=answer.status, media_type="application/json")


def _stream(body: bytes) -> Stream:
    async def chunks() -> AsyncIterator[bytes]:
        async with session[0].post(UPSTREAM, data=body, headers=HEADERS) as answer:
            async for chunk in answer.content.iter_any():
                yield chunk

    return Stream(chunks(), media_type="application/x-ndjson")


@get("/health")
async def health() -> str:
    return "ok"


@get("/stream/{model:path}")
async def stream_route(model: str, message: str) -> Stream:
    return _stream(_body(model, message, stream=True))


@get("/{model:path}")
async def whole_route(model: str, message: str) -> Response[bytes]:
    return await _whole(_body(model, message, stream=False))


@post("/api/chat", status_code=200)  # Litestar answers a POST with 201 unless told
async def chat(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    body = await request.body()
    return _stream(body) if msgspec.json.decode(body).get("stream", True) else await _whole(body)


async def _open() -> None:
    # As many connections to Ollama as Minato's default MINATO_MAX_CONNECTIONS.
    session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024)))


async def _close() -> None:
    await session.pop().close()


def create_app() -> Litestar:
    return Litestar([health, stream_route, whole_route, chat], on_startup=[_open], on_shutdown=[_close])
