"""``python -m bench [--quick] [--only PART] [--markdown PATH]``: measure Minato's overhead and print one table."""

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

from bench.processes import Minato, machine_info, raise_fd_limit, run_minato
from bench.report import Row, render_text, write_markdown
from bench.scenarios import FULL, QUICK, Plan, answer_rows, door_rows, pool_rows, relay_rows, slow_stream_rows
from tests.standin.process import run_standin

PARTS: Final = ("core", "pool")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter phases: about 1 minute, noisier")
    parser.add_argument(
        "--only",
        choices=PARTS,
        help="measure only one part: 'core' (one Minato, one backend) or 'pool' (backends, failover, Redis)",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the results page to PATH")
    return parser.parse_args(argv)


async def quiet_logging_rows(standin_port: int, minato: Minato, plan: Plan) -> list[Row]:
    """Everything measured with ``MINATO_LOG_LEVEL=warning`` (no per-request line)."""
    rows: list[Row] = []
    for stream in (False, True):
        for clients in (1, 32):
            rows += await answer_rows(standin_port, minato, plan, stream=stream, clients=clients)
    rows += await relay_rows(standin_port, minato, plan)
    rows += await door_rows(standin_port, minato, plan)
    # Last, so 1,000 upstream connections left in Minato's pool cannot affect the other figures.
    rows += await slow_stream_rows(standin_port, minato, plan)
    return rows


async def info_logging_rows(standin_port: int, minato: Minato, plan: Plan) -> list[Row]:
    """The default log level: the same 32-client run, now paying for one access line per request."""
    return await answer_rows(standin_port, minato, plan, stream=False, clients=32, label_suffix=", log level info")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    raise_fd_limit()  # before any child starts: they inherit it
    load_before = os.getloadavg()
    started = time.monotonic()
    parts = {args.only} if args.only else set(PARTS)
    rows: list[Row] = []
    with run_standin() as standin_url:
        standin_port = urlsplit(standin_url).port
        assert standin_port is not None
        if "core" in parts:
            with run_minato(standin_url, "warning") as minato:
                rows += uvloop.run(quiet_logging_rows(standin_port, minato, plan))
        if "pool" in parts:
            # Also at log level warning; these rows start their own Minatos and backends.
            rows += uvloop.run(pool_rows(standin_url, plan))
        if "core" in parts:
            with run_minato(standin_url, "info") as minato:
                rows += uvloop.run(info_logging_rows(standin_port, minato, plan))
    machine = machine_info(load_before)
    print(render_text(rows, machine))
    print(f"\n(measured in {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.markdown is not None:
        write_markdown(args.markdown, rows, machine)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
