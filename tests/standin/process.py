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

__all__ = ["REPO_ROOT", "run_standin"]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
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


@contextlib.contextmanager
def run_standin(*extra_args: str) -> Iterator[str]:
    """Run ``python -m tests.standin --port 0 *extra_args``; yield its base URL.

    Stderr goes to a temporary log file (its tail is shown if start-up fails). On exit the
    process gets SIGTERM, then SIGKILL after 5 s.
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with tempfile.TemporaryFile(mode="w+", prefix="standin-", suffix=".log") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter + our module
            [sys.executable, "-m", "tests.standin", "--port", "0", *extra_args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_read_first_line, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            try:
                first = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                first = ""
            if not first.startswith("LISTENING "):
                log.seek(0)
                raise RuntimeError(f"stand-in did not start (exit={proc.poll()}): {first!r}\n{log.read()[-4000:]}")
            yield first.split(" ", 1)[1].strip()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=STOP_GRACE_S)
            if not reader.is_alive():
                proc.stdout.close()
