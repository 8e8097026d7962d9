"""``python -m bench [--quick] [--only PART ...] [--profile PATH] [--markdown PATH]``: measure Minato's overhead.

Prints one table; every target of the hot-path and concurrency budgets is a row with its verdict.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import uvloop

from bench.common import FULL, QUICK, Plan
from bench.concurrency import concurrency_rows
from bench.core import answer_rows, door_rows, relay_rows
from bench.features import feature_rows
from bench.pool import pool_rows
from bench.processes import Server, machine_info, raise_fd_limit, run_minato
from bench.profile import Profiler
from bench.references import paced_rows, whole16_rows
from bench.report import Row, render_text, write_markdown
from bench.slow_reader import slow_reader_rows
from tests.support.standin.process import run_standin

PARTS: Final = {
    "core": "one Minato, one backend: 1 and 32 clients, the long relay, the front doors",
    "paced": "200 paced streams direct, through nginx, the bare relay and Minato's two stream routes",
    "whole16": "whole answers at 16 clients, Minato with its default features against the bare relay",
    "concurrency": "1,000 slow streams, then 5,000 at once, on one Minato worker",
    "slowreader": "one client reading a 100,000-token answer 10x slower than Ollama writes it",
    "pool": "backends, failover, Redis",
    "features": "what each feature costs per request: A/B runs (key, rate limit, log line, session turn, "
    "3 backends) and a profile (metrics, fair admission)",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter phases: about 4 minutes, noisier")
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="measure only this part (may be given more than once): "
        + "; ".join(f"'{name}' ({what})" for name, what in PARTS.items()),
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="PATH",
        help="also run py-spy on Minato (and the bare relay) during extra runs of the paced, whole16 and "
        "concurrency scenarios, "
        "and write the top entries (own time, total time, per Minato source file) to PATH",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the results page to PATH")
    return parser.parse_args(argv)


async def core_rows(standin_port: int, minato: Server, plan: Plan) -> list[Row]:
    """Everything measured on one Minato with ``MINATO_LOG_LEVEL=warning`` (no per-request line)."""
    rows: list[Row] = []
    for stream in (False, True):
        for clients in (1, 32):
            rows += await answer_rows(standin_port, minato, plan, stream=stream, clients=clients)
    rows += await relay_rows(standin_port, minato, plan)
    return rows + await door_rows(standin_port, minato, plan)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    raise_fd_limit()  # before any child starts: they inherit it
    load_before = os.getloadavg()
    started = time.monotonic()
    parts = set(args.only or PARTS)
    profiler = Profiler(args.profile) if args.profile is not None else None
    rows: list[Row] = []
    with run_standin() as standin_url:
        standin_port = urlsplit(standin_url).port
        assert standin_port is not None
        if "core" in parts:
            with run_minato(standin_url, "warning") as minato:
                rows += uvloop.run(core_rows(standin_port, minato, plan))
        if "paced" in parts:
            rows += uvloop.run(paced_rows(standin_url, plan, profiler))
        if "whole16" in parts:
            rows += uvloop.run(whole16_rows(standin_url, plan, profiler))
        if "pool" in parts:
            # Also at log level warning; these rows start their own Minatos and backends.
            rows += uvloop.run(pool_rows(standin_url, plan))
        if "slowreader" in parts:
            rows += uvloop.run(slow_reader_rows(plan))  # with its own stand-in
        if "features" in parts:
            rows += uvloop.run(feature_rows(plan))  # with its own stand-ins
        if "concurrency" in parts:
            rows += uvloop.run(concurrency_rows(plan, profiler))  # with its own stand-in
    machine = machine_info(load_before)
    print(render_text(rows, machine))
    print(f"\n(measured in {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if profiler is not None:
        profiler.write()
        print(f"wrote the profiles to {profiler.path}", file=sys.stderr)
    if args.markdown is not None:
        write_markdown(args.markdown, rows, machine)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
