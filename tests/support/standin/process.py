"""Start the stand-in as a real subprocess (for pytest fixtures and the benchmark)."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

__all__ = ["REPO_ROOT", "StandInProcess", "run_standin"]

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
START_TIMEOUT_S: Final = 15.0
STOP_GRACE_S: Final = 5.0


def _read_first_line(stream: IO[str], out: queue.Queue[str]) -> None:
    try:
        out.put(stream.readline())
        # Keep draining so the child can never block on a full stdout pipe.
        for _ in stream:
            pass
    except (OSError, ValueError):
        out.put("")


class StandInProcess:
    """``python -m tests.support.standin --port 0 *extra_args`` running, on its own free loopback port.

    Stderr goes to a temporary log file (its tail is shown if start-up fails). Several can run at
    once; each must be stopped (``stop`` or ``kill``; both may be called more than once).
    """

    def __init__(self, *extra_args: str) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = tempfile.TemporaryFile(mode="w+", prefix="standin-", suffix=".log")  # noqa: SIM115 - lives until stop()
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter + our module
            [sys.executable, "-m", "tests.support.standin", "--port", "0", *extra_args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=_read_first_line, args=(self._proc.stdout, lines), daemon=True)
        self._reader.start()
        try:
            first = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            first = ""
        if not first.startswith("LISTENING "):
            self._log.seek(0)
            tail = self._log.read()[-4000:]
            exit_code = self._proc.poll()
            self.stop()
            raise RuntimeError(f"stand-in did not start (exit={exit_code}): {first!r}\n{tail}")
        self.url: str = first.split(" ", 1)[1].strip()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        """SIGTERM (the stand-in closes its connections), then SIGKILL after 5 s."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL at once, like a host that dies: open connections are cut, new ones refused."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=STOP_GRACE_S)
        if not self._reader.is_alive() and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def run_standin(*extra_args: str) -> Iterator[str]:
    """Run a ``StandInProcess`` for the ``with`` block; yield its base URL."""
    standin = StandInProcess(*extra_args)
    try:
        yield standin.url
    finally:
        standin.stop()
