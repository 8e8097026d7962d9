"""What ``minato serve`` adds around the app: its start-up line, a second Ctrl-C that cuts the
running requests without cutting the app's shutdown short, and ``SIGHUP``, which reloads the keys
files in every process without restarting any."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Final, cast
from urllib.parse import urlsplit

import structlog
import uvicorn
from litestar import Litestar
from litestar.types import (
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    LifeSpanSendMessage,
    Receive,
    Scope,
    Send,
)
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from minato import __version__
from minato.auth.keyring import Keyring
from minato.settings import Settings
from minato.state.homes import MEMORY_URL
from minato.web.app import create_app
from minato.web.keywatch import KeyWatch

logger = structlog.get_logger("minato.serve")

REDIS_DEFAULT_PORT: Final = 6379


def create_served_app() -> SecondInterrupt:
    """The app each server process runs (the ``uvicorn`` factory of ``minato serve``)."""
    if threading.current_thread() is threading.main_thread():
        # Until the app listens for it, a SIGHUP must not end the process (its default): the keys
        # are being read anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    app = create_app()
    keywatch: KeyWatch = app.state.keywatch
    return SecondInterrupt(app, on_sighup=keywatch.ask)


def run(config: uvicorn.Config) -> None:
    """``uvicorn.run``, with a supervisor of several workers that passes ``SIGHUP`` on to them.

    uvicorn's supervisor answers ``SIGHUP`` by replacing every worker, which would cut the streams
    they relay past the shutdown grace and forget what each holds in memory (its queue, a memory state
    home's conversations). Minato's workers each reload their keys on ``SIGHUP`` instead (as a single
    process does), so the supervisor sends it to each of them.
    """
    if config.workers > 1:
        sock = config.bind_socket()
        with contextlib.suppress(KeyboardInterrupt):
            KeysReloadingSupervisor(config, sockets=[sock]).run()
        return
    config.load_app()
    server = uvicorn.Server(config=config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class KeysReloadingSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, but ``SIGHUP`` reloads the keys of every worker."""

    def handle_hup(self) -> None:
        logger.info("sighup_passed_on", workers=len(self.processes), reason="reload the keys files")
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # a worker that just died is being replaced
                    os.kill(process.pid, signal.SIGHUP)


class SecondInterrupt:
    """A second Ctrl-C cuts the running requests at once, and Minato still shuts down in full, quietly.

    uvicorn's own second Ctrl-C stops without waiting for running requests and without the app's
    shutdown; the closing event loop then cancels every task at once, Litestar's lifespan among them:
    a failed-shutdown traceback at error level, the conversation store closed half-way, and a
    traceback per cut request. Here, once the app has started, the first SIGINT after a SIGINT or
    SIGTERM does what the end of ``MINATO_SHUTDOWN_GRACE`` does (the running requests are cancelled,
    and the server goes on to the app's shutdown) and is not passed on to the server. The next one is,
    as the server's "force quit".

    The server's handlers are installed before the app starts (uvicorn's ``capture_signals``) and put
    back after it stops, so they are chained to here for that time only.
    """

    def __init__(self, app: Litestar, on_sighup: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_sighup = on_sighup
        """What a ``SIGHUP`` does once the app has started (reload the keys files)."""
        self.requests: set[asyncio.Task[Any]] = set()
        self.stopping = False
        """A SIGINT or SIGTERM has come: the server is shutting down."""
        self.cut = False
        """The running requests have been cut."""

    async def __call__(
        self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive, send: Send | LifeSpanSend
    ) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._after_startup(cast("LifeSpanSend", send)))
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - an ASGI server always calls from a task
            await self.app(scope, receive, send)
            return
        self.requests.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests.discard(task)

    def _after_startup(self, send: LifeSpanSend) -> LifeSpanSend:
        async def watch(message: LifeSpanSendMessage) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.chain_signal_handlers(asyncio.get_running_loop())
                self.listen_for_sighup(asyncio.get_running_loop())
            await send(message)

        return watch

    def listen_for_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let ``SIGHUP`` do :attr:`on_sighup` (reload the keys files: see :mod:`minato.web.keywatch`)."""
        if self.on_sighup is not None and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, self.on_sighup)

    def chain_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put :meth:`on_signal` in front of the server's SIGINT and SIGTERM handlers, if it has its own."""
        if threading.current_thread() is not threading.main_thread():
            return
        servers: dict[int, Any] = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        if servers[signal.SIGINT] is signal.default_int_handler or not all(map(callable, servers.values())):
            return  # no server of ours handles them: leave Python's defaults

        def on_signal(sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGINT and self.stopping and not self.cut:
                self.cut = True
                # The handler runs between two bytecodes of the loop's thread: cancel from the loop.
                loop.call_soon_threadsafe(self.cut_requests)
                return
            self.stopping = True
            handler = servers[sig]
            if callable(handler):
                handler(sig, frame)

        for sig in servers:
            signal.signal(sig, on_signal)

    def cut_requests(self) -> None:
        """Cancel every running request, as the end of the shutdown grace does."""
        logger.warning("shutdown_cut_requests", requests=len(self.requests), reason="a second Ctrl-C")
        for task in list(self.requests):
            task.cancel()


def startup_fields(
    settings: Settings, keyring: Keyring, host: str, port: int, workers: int, env_file: Path | None
) -> dict[str, Any]:
    """The start-up line's fields: where Minato listens and what it serves with, never a key or a password."""
    shown_host = f"[{host}]" if ":" in host else host
    return {
        "version": __version__,
        "listen": f"http://{shown_host}:{port}",
        "ollama": list(settings.ollama_urls),
        "auth": describe_auth(settings, keyring),
        "state": describe_state(settings),
        "workers": workers,
        "env_file": str(env_file) if env_file is not None else None,
    }


def describe_auth(settings: Settings, keyring: Keyring) -> str:
    """``keyless``, ``N keys``, or ``keys file PATH (N keys)`` when a file holds (some of) them."""
    count = len(keyring.callers)
    if not count:
        return "keyless"
    keys = f"{count} key" if count == 1 else f"{count} keys"
    files = [path for path in (settings.keys_file, settings.api_keys_file) if path]
    if files:
        return f"keys file {' and '.join(files)} ({keys})"
    return keys


def describe_state(settings: Settings) -> str:
    """Where the conversations and the shared limits live: ``memory``, ``sqlite PATH`` or ``redis HOST:PORT/DB``."""
    if settings.redis_url:
        return _describe_redis(settings.redis_url)
    if settings.session_store == MEMORY_URL:
        return "memory"
    # As minato.state.homes.open_store reads the setting.
    return f"sqlite {Path(settings.session_store.removeprefix('sqlite://')).resolve()}"


def _describe_redis(url: str) -> str:
    """``redis host:port/db`` (``(TLS)`` for ``rediss://``, ``unix:PATH`` for a socket): no user, no password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"redis unix:{parts.path}"
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port or REDIS_DEFAULT_PORT
    except ValueError:
        port = REDIS_DEFAULT_PORT
    db = parts.path.strip("/") or "0"
    tls = " (TLS)" if parts.scheme == "rediss" else ""
    return f"redis {host}:{port}/{db}{tls}"
