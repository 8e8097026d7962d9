"""``minato --version`` and ``--help`` stay fast: importing the command line loads no framework, no HTTP
client, no state backend, no logging library and no settings (each is imported once a command needs it)."""

from __future__ import annotations

import subprocess
import sys

#: Top-level packages the command line must not import before it parses its arguments.
HEAVY = ("litestar", "httpx", "aiohttp", "uvicorn", "redis", "structlog", "msgspec")


def test_importing_the_command_line_loads_no_framework_client_or_settings() -> None:
    code = (
        "import sys, minato.server.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r} or m == 'minato.settings'))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = done.stdout.strip()
    assert loaded == "[]"


def test_version_answers_without_loading_them_either() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['minato', '--version']\n"
        "try:\n"
        "    runpy.run_module('minato', run_name='__main__')\n"
        "except SystemExit:\n"
        f"    print(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r}))\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("minato ")
    assert result.stdout.splitlines()[-1] == "[]"
