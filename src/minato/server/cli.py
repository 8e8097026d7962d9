"""Command line: ``minato serve [--host] [--port] [--workers] [--env-file]`` and ``minato keys
add|list|revoke`` (:mod:`minato.server.keys_cli`) (also ``python -m minato``)."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from minato import __version__
from minato.server.keys_cli import add_commands as add_keys_commands
from minato.server.keys_cli import run as run_keys_command

if TYPE_CHECKING:
    from minato.server.envfile import EnvFile
    from minato.settings import Settings

# Everything past argparse is imported once a command needs it: ``minato --version`` and ``--help``
# load no settings, no state, no logging and no framework (tests/unit/test_cli_imports.py).

#: The variable a settings error starts with (``MINATO_PORT: ...``), to say where its value came from.
_NAMED: re.Pattern[str] = re.compile(r"([A-Z][A-Z0-9_]*)\b")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (flags override the ``MINATO_*`` variables)."""
    parser = argparse.ArgumentParser(prog="minato", description="HTTP gateway in front of Ollama.")
    parser.add_argument("--version", action="version", version=f"minato {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (MINATO_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (MINATO_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (MINATO_WORKERS, default 1)")
    serve.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="read settings from this file (default: ./.env when there is one); the environment wins over it",
    )
    add_keys_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``minato`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        return run_keys_command(args)
    from minato.auth.keyring import Keyring, refuse_unsafe_start
    from minato.errors import SettingsError
    from minato.server.envfile import load_env_file
    from minato.settings import Settings
    from minato.state.homes import refuse_unshared_workers

    try:
        env_file = load_env_file(args.env_file, os.environ)
    except SettingsError as exc:
        print(f"minato: invalid setting: {exc}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        keyring = Keyring.from_settings(settings)
    except SettingsError as exc:
        print(f"minato: invalid setting: {exc}{_origin(env_file, str(exc))}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    workers = args.workers or settings.workers
    if not 0 <= port <= 65535 or workers < 1:
        print("minato: --port must be 0-65535 and --workers at least 1", file=sys.stderr)
        return 2
    refusal = refuse_unsafe_start(settings, host, keyring) or refuse_unshared_workers(settings, workers)
    if refusal:
        print(f"minato: {refusal}", file=sys.stderr)
        return 2
    return serve(host, port, workers, settings, env_file)


def _origin(env_file: EnvFile | None, message: str) -> str:
    """Where the value a settings error names came from, when it came from the env file."""
    match = _NAMED.match(message)
    return env_file.origin(match.group(1)) if env_file is not None and match else ""


def serve(host: str, port: int, workers: int, settings: Settings, env_file: EnvFile | None = None) -> int:
    """Run the ASGI server until it is told to stop."""
    import structlog
    import uvicorn

    from minato.auth.keyring import Keyring
    from minato.observability.logging import configure_logging
    from minato.server.httpserver import BoundedHttpToolsProtocol, raise_open_file_limit
    from minato.server.serving import run, startup_fields

    # This process's lines (and uvicorn's: with --workers, its "running on" line is written here).
    configure_logging(settings)
    logger = structlog.get_logger("minato.serve")
    if env_file is not None:
        logger.info(
            "env_file_read",
            path=str(env_file.path),
            settings=len(env_file.applied),
            applied=list(env_file.applied),
            overridden_by_environment=list(env_file.overridden),
            not_minatos=list(env_file.ignored),
        )
    keyring = Keyring.from_settings(settings)
    logger.info(
        "starting", **startup_fields(settings, keyring, host, port, workers, env_file.path if env_file else None)
    )
    # Every client connection is a descriptor; worker processes inherit the raised limit.
    raise_open_file_limit()
    # Each worker reads its settings from the environment: tell it how many share the state.
    os.environ["MINATO_WORKERS"] = str(workers)
    config = uvicorn.Config(
        "minato.server.serving:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),  # 0: close at once; never None (forever)
        server_header=False,
    )
    run(config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
