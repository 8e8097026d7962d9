"""A real ``redis-server`` for the tests: started on a free loopback port with persistence off.

The tests of the shared state talk to Debian's ``redis-server`` (``.ci/run`` installs it), never to a
fake: a server of their own, in a scratch directory, that a test can stop and start again *on the
same port* to see Minato fail closed and recover.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from tests.support.processes import terminate

__all__ = ["RedisServer", "RedisServerMissingError", "free_port", "redis_server_binary"]

DEBIAN_BINARY: Final = Path("/usr/bin/redis-server")
START_TIMEOUT_S: Final = 10.0
MISSING: Final = (
    "redis-server is not installed: the shared-state tests need Debian's redis-server "
    "(apt-get install redis-server; .ci/run installs it when missing)"
)


class RedisServerMissingError(RuntimeError):
    """No ``redis-server`` binary on this machine."""


def redis_server_binary() -> Path:
    """The ``redis-server`` to run: Debian's, else the first on ``PATH``."""
    if DEBIAN_BINARY.exists():
        return DEBIAN_BINARY
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerMissingError(MISSING)
    return Path(found)


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``, files in ``directory``; stoppable and
    startable again on the same port (the port is chosen once, at construction)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = port or free_port()
        self.log_path = directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL Minato is given (``MINATO_REDIS_URL``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The process's id while it runs (a test may stop it with ``SIGSTOP`` to make Redis hang)."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers ``PING``."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            # Redis acts on SIGTERM in its cron, 10 times a second by default: 50 makes a stop ~20 ms.
            "--hz",
            "50",
        ]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if _answers_ping(self.port):
                return
            time.sleep(0.01)
        self.stop()
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}:\n{log[-2000:]}")

    def stop(self) -> None:
        """Stop the server: SIGTERM, a bounded wait, then SIGKILL. The port is free afterwards."""
        process, self._process = self._process, None
        terminate(process)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
