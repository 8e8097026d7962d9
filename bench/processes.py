"""The processes under test: Minato as a real ``python -m minato serve``, and /proc readings.

The stand-in comes from :mod:`tests.standin.process`; Minato is started the way
``tests/e2e/conftest.py`` starts it, with its log going to a file (as it would to a container's
log pipe) rather than to the benchmark's terminal.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "Minato",
    "cpu_seconds",
    "machine_info",
    "raise_fd_limit",
    "rss_bytes",
    "run_minato",
]

REPO: Final = Path(__file__).resolve().parents[1]
START_TIMEOUT_S: Final = 20.0
STOP_GRACE_S: Final = 10.0
WANTED_FDS: Final = 8192
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Minato:
    """A running Minato server."""

    port: int
    pid: int
    log_path: Path


def raise_fd_limit() -> int:
    """Raise this process's soft fd limit; return it.

    1,000 slow streams need 1,000 sockets in the load generator and 2,000 in Minato (client side
    plus its pool to the stand-in). Children inherit the limit, so this runs before they start.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = WANTED_FDS if hard == resource.RLIM_INFINITY else min(WANTED_FDS, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def run_minato(ollama_url: str, log_level: str, settings: Mapping[str, str] | None = None) -> Iterator[Minato]:
    """Run ``python -m minato serve`` (one worker) in front of ``ollama_url`` until the block ends.

    ``ollama_url`` may be a comma-separated pool; ``settings`` are further ``MINATO_*`` variables.
    """
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MINATO_", "OLLAMA_"))}
    with tempfile.TemporaryDirectory(prefix="minato-bench-") as tmp:
        env.update(
            {
                "MINATO_OLLAMA_URL": ollama_url,
                "MINATO_LOG_LEVEL": log_level,
                "MINATO_LOG_FORMAT": "json",  # what a served process writes when stdout is not a tty
                # Each run starts with no conversations, and leaves no file in the repository.
                "MINATO_SESSION_STORE": str(Path(tmp) / "minato.db"),
                "PYTHONUNBUFFERED": "1",
                **(settings or {}),
            }
        )
        log_path = Path(tmp) / "minato.log"
        with log_path.open("wb") as log:
            # With one worker uvicorn serves in this very process, so its pid is the one to meter.
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "minato", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _healthy(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"minato did not start (exit={process.poll()}):\n{log_path.read_text()[-4000:]}")
                time.sleep(0.05)
            yield Minato(port=port, pid=process.pid, log_path=log_path)
            if process.poll() is not None:
                raise RuntimeError(f"minato died during the benchmark:\n{log_path.read_text()[-4000:]}")
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Current resident set size of ``pid`` (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_state() -> str:
    """The commit Minato was measured at, and whether ``src/`` had uncommitted edits (read-only git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, read-only
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # --no-optional-locks: status must not even refresh the index file.
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "src"],  # noqa: S607 - read-only
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{commit} + uncommitted changes in src/" if dirty else commit


def machine_info(load_before: tuple[float, float, float]) -> dict[str, str]:
    """What the numbers were measured on.

    The load average from before the run is part of it: on a 2-core machine anything else
    running (a test suite, a build) moves every figure, and this is how a reader can tell.
    """
    return {
        "CPU": _cpu_model(),
        "Cores": str(os.cpu_count()),
        "Python": platform.python_version(),
        "Kernel": f"{platform.system()} {platform.release()}",
        "Load avg": "{:.2f} {:.2f} {:.2f} (1/5/15 min, before the run)".format(*load_before),
        "Minato at": source_state(),
        "Versions": ", ".join(
            f"{name} {_version(name)}" for name in ("minato", "litestar", "uvicorn", "httpx", "aiohttp", "uvloop")
        ),
    }
