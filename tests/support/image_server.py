"""An image server on loopback and a resolver that sends every name to it: the image-link tests' fixtures."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from minato.core.fetch import ImageFetcher
from minato.settings import Settings
from tests.support.payloads import JPEG_HEADER, PNG_1PX

LIMIT = 64 * 1024  # MINATO_MAX_IMAGE_BYTES in the test settings


@dataclass
class ImageServer:
    """The local image host: its base URL (as ``localhost``), its port and the paths it was asked for."""

    base: str
    port: int
    hits: list[str] = field(default_factory=list)


@pytest.fixture(name="server")
def fx_server() -> Iterator[ImageServer]:
    """A real HTTP server on 127.0.0.1 serving an image, redirects, a huge, a slow and a text body.

    It runs on its own event loop in a thread: the test client blocks the test's loop while Minato
    handles a request (Minato runs in the client's portal thread).
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="image-server", daemon=True)
    thread.start()
    try:
        server, runner = asyncio.run_coroutine_threadsafe(_start_image_server(), loop).result(timeout=10)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _start_image_server() -> tuple[ImageServer, web.AppRunner]:
    app = web.Application()
    server = ImageServer(base="", port=0)

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        server.hits.append(request.path_qs)
        return await handler(request)

    app.middlewares.append(record)

    async def pixel(_: web.Request) -> web.Response:
        return web.Response(body=PNG_1PX, content_type="image/png")

    async def jpeg(_: web.Request) -> web.Response:
        return web.Response(body=JPEG_HEADER, content_type="image/jpeg")

    async def hop(request: web.Request) -> web.Response:
        left = int(request.match_info["left"])
        raise web.HTTPFound(f"/hop/{left - 1}" if left > 1 else "../pixel.png")  # absolute path, then relative

    async def to_loopback(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{server.port}/pixel.png")

    async def to_file(_: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=PNG_1PX + b"\x00" * LIMIT, content_type="image/png")

    async def huge_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(PNG_1PX)
        for _ in range(20):
            await response.write(b"\x00" * 8192)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(PNG_1PX[:8])
        await asyncio.sleep(30)
        return response

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="hello, not an image", content_type="text/plain")

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, text="no")

    app.router.add_get("/pixel.png", pixel)
    app.router.add_get("/photo.jpg", jpeg)
    app.router.add_get("/hop/{left}", hop)
    app.router.add_get("/to-loopback", to_loopback)
    app.router.add_get("/to-file", to_file)
    app.router.add_get("/huge", huge)
    app.router.add_get("/huge-chunked", huge_chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/text", text)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    server.base = f"http://localhost:{server.port}"
    return server, runner


@pytest.fixture(name="settings")
def fx_settings(settings: Settings) -> Settings:
    """The suite's settings, with ``localhost`` (the test image server) allowed and a short timeout."""
    return msgspec.structs.replace(settings, image_fetch_allow=("localhost",), image_fetch_timeout=1.0)


@pytest.fixture(name="fake_dns")
def fx_fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names resolved by a table instead of DNS (others resolve for real); records every lookup."""
    table: dict[str, list[str]] = {}
    real = ImageFetcher.lookup

    async def lookup(self: ImageFetcher, host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        if host in table:
            return [(socket.AF_INET6 if ":" in address else socket.AF_INET, address) for address in table[host]]
        return await real(self, host, port)

    monkeypatch.setattr(ImageFetcher, "lookup", lookup)
    return table
