"""``python -m tests.support.standin``: run the Ollama stand-in until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from aiohttp import web

from tests.support.standin.server import Config, StandIn, start_models


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of model names; ``''`` is none."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m tests.support.standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks an ephemeral port")
    parser.add_argument("--version", default="0.33.0-rc2", help="what /api/version reports")
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=0.0,
        help="when > 0, pace the tokens of every model this many ms apart",
    )
    parser.add_argument("--pull-step-ms", type=float, default=5.0, help="pause between pull lines")
    parser.add_argument("--no-host-guard", action="store_true", help="accept any Host header")
    parser.add_argument(
        "--models",
        type=_names,
        default=None,
        help="comma-separated models installed at start, e.g. llama3.2,qwen3:0.6b ('' for none; "
        "default: the whole catalogue)",
    )
    parser.add_argument(
        "--loaded", type=_names, default=(), help="comma-separated installed models loaded in memory at start"
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="start with a full queue (Ollama's 503 'server busy'); POST /_standin/busy changes it",
    )
    ns = parser.parse_args(argv)
    config = Config(
        host=ns.host,
        port=ns.port,
        version=ns.version,
        token_delay_ms=ns.token_delay_ms,
        pull_step_ms=ns.pull_step_ms,
        host_guard=not ns.no_host_guard,
        models=ns.models,
        loaded=ns.loaded,
        busy=ns.busy,
    )
    try:
        start_models(config)
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


async def serve(config: Config) -> None:
    standin = StandIn(config)
    # Go's net/http never decodes a request's Content-Encoding: handlers get the bytes as sent.
    server = web.Server(standin.handle, handler_cancellation=True, access_log=None, auto_decompress=False)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    port = config.port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            port = int(addr[1])
            break
    sys.stdout.write(f"LISTENING http://{_display_host(config.host)}:{port}\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
