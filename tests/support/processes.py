"""Stopping the servers the tests start themselves (redis-server, prometheus)."""

from __future__ import annotations

import subprocess
from typing import Final

STOP_GRACE_S: Final = 5.0
"""Seconds a server gets to exit after SIGTERM before it is killed."""


def terminate(process: subprocess.Popen[bytes] | None, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM, ``grace`` seconds' wait, then SIGKILL; nothing for a process that is gone already."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)
