"""``python -m bench.instructions TREE [TREE ...]``: CPU instructions Minato spends per request and per token.

Timings on a shared, noisy machine move by tens of percent between runs; instruction counts do not.
Each tree (a checkout with its own ``.venv``, e.g. ``git worktree add /tmp/base main && cd /tmp/base &&
uv sync``) serves under ``valgrind --tool=callgrind`` in front of one stand-in, and each workload is
counted on its own: counters zeroed, the requests sent, the counters dumped. The trees take turns per
workload (interleaved A/B), so whatever else the machine does cannot favour one.

Workloads (1 client, sequential, log level ``warning``, no key):

- ``whole``: ``GET /{model}`` whole answers; per request;
- ``posted``: ``POST /{model}`` with a JSON body; per request;
- ``door``: ``POST /api/chat`` non-streamed; per request;
- ``stream``: ``GET /stream/{model}`` of a 1,000-token answer; per token;
- ``door_stream``: ``POST /api/chat`` streamed, 1,000 tokens; per token.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import httpx

from tests.support.standin.process import run_standin

MODEL: Final = "llama3.2:1b"
LONG: Final = "standin/tokens:1000"
_TOTALS: Final = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Counted:
    """One tree's Minato under callgrind, its counters driven by ``callgrind_control``."""

    def __init__(self, tree: Path, ollama_url: str, out_dir: Path) -> None:
        self.tree = tree
        self.port = _free_port()
        self.out = out_dir / f"callgrind.{tree.name}.out"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MINATO_", "OLLAMA_"))}
        env |= {
            "MINATO_OLLAMA_URL": ollama_url,
            "MINATO_LOG_LEVEL": "warning",
            "MINATO_SESSION_STORE": "memory://",
            "MINATO_OLLAMA_PROBE_INTERVAL": "0",
        }
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}",
            str(tree / ".venv/bin/python"),
            "-m",
            "minato",
            "serve",
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(  # noqa: S603 - valgrind and the tree's own interpreter
            command, cwd=out_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(1)
        raise RuntimeError(f"{tree}: Minato did not start under valgrind")

    def _control(self, *flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(self.process.pid)], check=True, capture_output=True)  # noqa: S603, S607

    def count(self, work: Callable[[str], None]) -> int:
        """Instructions Minato spent on ``work`` (after one warm-up run of it)."""
        work(self.url)
        for dump in self.out.parent.glob(f"{self.out.name}*"):
            dump.unlink()
        self._control("-z")
        self._control("-i", "on")
        work(self.url)
        self._control("-i", "off")
        self._control("-d")
        # One file per dump; a file states its total twice at most (``summary:`` and ``totals:``).
        return sum(
            max((int(match) for match in _TOTALS.findall(dump.read_bytes())), default=0)
            for dump in self.out.parent.glob(f"{self.out.name}*")
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


def _requests(n: int, send: Callable[[httpx.Client], httpx.Response]) -> Callable[[str], None]:
    def work(url: str) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(n):
                response = send(client)
                response.raise_for_status()

    return work


WORKLOADS: Final[dict[str, tuple[Callable[[str], None], int, str]]] = {
    "whole": (_requests(100, lambda c: c.get(f"/{MODEL}", params={"message": "hi"})), 100, "request"),
    "posted": (_requests(100, lambda c: c.post(f"/{MODEL}", json={"message": "hi"})), 100, "request"),
    "door": (
        _requests(100, lambda c: c.post("/api/chat", json={"model": MODEL, "messages": [], "stream": False})),
        100,
        "request",
    ),
    "stream": (_requests(3, lambda c: c.get(f"/stream/{LONG}", params={"message": "hi"})), 3000, "token"),
    "door_stream": (
        _requests(
            3, lambda c: c.post("/api/chat", json={"model": LONG, "messages": [{"role": "user", "content": "hi"}]})
        ),
        3000,
        "token",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts, each with its own .venv")
    parser.add_argument("--only", choices=WORKLOADS, action="append", help="count only this workload")
    args = parser.parse_args(argv)
    chosen = args.only or list(WORKLOADS)
    with run_standin() as standin_url, tempfile.TemporaryDirectory() as scratch:
        servers = [Counted(tree.resolve(), standin_url, Path(scratch)) for tree in args.trees]
        try:
            print(f"{'workload':<12} " + " ".join(f"{tree.name:>16}" for tree in args.trees) + "  unit")
            for name in chosen:
                work, units, unit = WORKLOADS[name]
                counts = [server.count(work) / units for server in servers]
                cells = " ".join(f"{count:>16,.0f}" for count in counts)
                ratios = " ".join(f"{count / counts[0]:.3f}x" for count in counts[1:])
                print(f"{name:<12} {cells}  instructions/{unit}  {ratios}", flush=True)
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
