"""The processes under test: Minato as a real ``python -m minato serve``, the references, /proc readings.

The stand-in comes from :mod:`tests.support.standin.process`; Minato is started the way
``tests/support/servers.py`` starts it, with its log going to a file (as it would to a container's
log pipe) rather than to the benchmark's terminal. The references it is compared with are Debian's
nginx (:func:`run_nginx`), the floor relay of :mod:`bench.floor_relay` (:func:`run_floor_relay`) and
the bare Litestar relay of :mod:`bench.bare_relay` (:func:`run_bare_relay`), each on its own free
loopback port.
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
    "NGINX",
    "Server",
    "cpu_seconds",
    "machine_info",
    "raise_fd_limit",
    "rss_bytes",
    "run_bare_relay",
    "run_floor_relay",
    "run_minato",
    "run_nginx",
]

REPO: Final = Path(__file__).resolve().parents[1]
START_TIMEOUT_S: Final = 20.0
STOP_GRACE_S: Final = 10.0
FD_CAP: Final = 1 << 16  # when the hard limit is unlimited: more than any row needs
NGINX: Final = "/usr/sbin/nginx"  # Debian's package
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """A running server under test: Minato, or one of the references."""

    port: int
    pid: int  # its CPU is this process's and its descendants' (nginx's workers)
    log_path: Path


def raise_fd_limit() -> int:
    """Raise this process's soft fd limit to the hard one; return it.

    5,000 concurrent streams need 5,000 sockets in the load generator, 5,000 in the stand-in and
    10,000 in Minato (client side plus its pool to the stand-in). Children inherit the limit, so
    this runs before they start.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_CAP if hard == resource.RLIM_INFINITY else hard
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
def _serving(
    name: str, argv: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path = REPO
) -> Iterator[Server]:
    """Run ``argv`` in ``cwd`` until the block ends, once ``GET /health`` on ``port`` answers 200."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules, or Debian's nginx
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit={process.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        yield Server(port=port, pid=process.pid, log_path=log_path)
        if process.poll() is not None:
            raise RuntimeError(f"{name} died during the benchmark:\n{log_path.read_text()[-4000:]}")
    finally:
        process.terminate()  # nginx's master stops its workers on SIGTERM, as uvicorn its tasks
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(("MINATO_", "OLLAMA_"))}


@contextlib.contextmanager
def run_minato(ollama_url: str, log_level: str, settings: Mapping[str, str] | None = None) -> Iterator[Server]:
    """Run ``python -m minato serve`` (one worker) in front of ``ollama_url`` until the block ends.

    ``ollama_url`` may be a comma-separated pool; ``settings`` are further ``MINATO_*`` variables.
    """
    port = _free_port()
    env = _clean_env()
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
        # With one worker uvicorn serves in this very process, so its pid is the one to meter.
        argv = [sys.executable, "-m", "minato", "serve", "--host", "127.0.0.1", "--port", str(port)]
        # Not in the repository: a developer's ./.env there (which minato serve reads) stays out of the figures.
        with _serving("minato", argv, env, port, Path(tmp) / "minato.log", cwd=Path(tmp)) as server:
            yield server


@contextlib.contextmanager
def run_bare_relay(ollama_url: str) -> Iterator[Server]:
    """Run :mod:`bench.bare_relay` under uvicorn as ``minato serve`` runs Minato (httptools, uvloop, one worker)."""
    port = _free_port()
    env = {**_clean_env(), "BARE_RELAY_UPSTREAM": ollama_url, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_relay:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
        "--no-server-header",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="minato-bench-relay-") as tmp,
        _serving("the bare relay", argv, env, port, Path(tmp) / "relay.log") as server,
    ):
        yield server


@contextlib.contextmanager
def run_floor_relay(ollama_url: str) -> Iterator[Server]:
    """Run :mod:`bench.floor_relay` (uvloop + httptools protocols, no framework) in front of ``ollama_url``."""
    port = _free_port()
    env = {**_clean_env(), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "bench.floor_relay", "--port", str(port), "--upstream", ollama_url]
    with (
        tempfile.TemporaryDirectory(prefix="minato-bench-floor-") as tmp,
        _serving("the floor relay", argv, env, port, Path(tmp) / "floor.log") as server,
    ):
        yield server


NGINX_CONF: Final = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    upstream standin {{
        server 127.0.0.1:{upstream};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /health {{
            return 200;
        }}
        location / {{
            proxy_pass http://standin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream};
            proxy_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def run_nginx(upstream_port: int) -> Iterator[Server]:
    """Run Debian's nginx as a reverse proxy to ``upstream_port``: one worker, ``proxy_buffering off``.

    Everything it writes (config, pid, error log, temp files) is in its own temporary directory;
    ``daemon off`` keeps the master a child of this process, and the master's CPU plus its worker's
    is the proxy's.
    """
    if not os.access(NGINX, os.X_OK):
        raise FileNotFoundError(NGINX)
    port = _free_port()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    with tempfile.TemporaryDirectory(prefix="minato-bench-nginx-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        # Each proxied stream holds two connections; nginx itself wants a few descriptors.
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=upstream_port, connections=soft // 2))
        # -e: the error log from the very start, before the config is read (else /var/log/nginx).
        argv = [NGINX, "-p", tmp, "-c", str(conf), "-e", str(Path(tmp) / "error.log")]
        with _serving("nginx", argv, _clean_env(), port, Path(tmp) / "nginx.out") as server:
            yield server


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, and so on (from every ``/proc/<pid>/stat``'s parent field)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone since the listing
        parent = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0  # a descendant that has just exited
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (all their threads), from ``/proc/<pid>/stat``.

    Minato and the bare relay serve in one process; nginx in a master and its worker.
    """
    return _own_cpu_seconds(pid) + sum(_own_cpu_seconds(child) for child in _descendants(pid))


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


def _nginx_version() -> str:
    try:
        # nginx -v writes "nginx version: nginx/1.22.1" to stderr.
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=True).stderr  # noqa: S603
    except (OSError, subprocess.CalledProcessError):
        return "nginx not installed"
    return out.strip().rpartition(": ")[2].replace("/", " ")


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
        )
        + f", {_nginx_version()}",
    }
