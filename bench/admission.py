"""``python -m bench.admission BASE [TREE]``: what fair admission costs per request against the FIFO queue.

Each tree is a checkout (``git worktree add /tmp/base <commit>``); its ``src`` is put first on the
path of this interpreter, so the two trees' ``minato.core.admission`` run with the same libraries.
Two loops, timed by the process's CPU clock (what the machine's other load moves least), the trees
taking turns, the median of the repeats kept:

- ``queued``: 16 tasks over 4 keys, ``MINATO_MAX_GENERATIONS=4``: each takes a slot (waiting in the
  queue most of the time), holds it for one turn of the event loop, gives it back; per request;
- ``fast``: one task, nobody waiting: ``try_acquire`` then ``release`` (the path of every request
  while a slot is free); per request.

Both with the app's metrics (the queue's gauges, and in the fair tree the wait histogram). The figures
include the event loop's own work (a task switch per wait), the same for both trees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.processes import machine_info
from bench.report import Row, render_text

REPEATS: Final = 7
QUEUED_REQUESTS: Final = 40_000
FAST_REQUESTS: Final = 200_000

#: Run in a tree's interpreter path: prints ``{"queued": µs, "fast": µs, "module": path}``.
DRIVER: Final = r"""
import asyncio, inspect, json, sys, time
import uvloop
from minato.core import admission as module
from minato.core.admission import Admission
from minato.observability.metrics import Metrics

CLIENTS, KEYS, SLOTS = 16, 4, 4
queued_n, fast_n = int(sys.argv[1]), int(sys.argv[2])
fair = "caller" in inspect.signature(Admission.acquire).parameters
if fair:
    from minato.auth.caller import Caller, Role
    callers = [Caller(fingerprint=f"{k:012x}", role=Role.USER, name=f"k{k}") for k in range(KEYS)]

async def client(admission, n, index):
    caller = callers[index % KEYS] if fair else None
    for _ in range(n):
        slot = await (admission.acquire("m", caller) if fair else admission.acquire("m"))
        await asyncio.sleep(0)
        slot.release()

async def queued():
    admission = Admission(SLOTS, 0, 10_000, 60.0, Metrics())
    per = queued_n // CLIENTS
    start = time.process_time()
    await asyncio.gather(*(client(admission, per, i) for i in range(CLIENTS)))
    return (time.process_time() - start) / (per * CLIENTS) * 1e6

def fast():
    admission = Admission(SLOTS, 0, 10_000, 60.0, Metrics())
    caller = callers[0] if fair else None
    take = (lambda: admission.try_acquire("m", caller)) if fair else (lambda: admission.try_acquire("m"))
    start = time.process_time()
    for _ in range(fast_n):
        take().release()
    return (time.process_time() - start) / fast_n * 1e6

print(json.dumps({"queued": uvloop.run(queued()), "fast": fast(), "module": module.__file__}))
"""


def measure(tree: Path) -> dict[str, float | str]:
    """One run of both loops in ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(  # noqa: S603 - this interpreter, our own driver
        [sys.executable, "-c", DRIVER, str(QUEUED_REQUESTS), str(FAST_REQUESTS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float | str] = json.loads(done.stdout)
    if not str(result["module"]).startswith(str(tree / "src")):
        raise RuntimeError(f"{tree}: measured {result['module']}, not the tree's own admission")
    return result


def rows(base: Path, tree: Path, repeats: int = REPEATS) -> list[Row]:
    """The two loops in both trees, interleaved; medians, with the change against ``base``."""
    runs: dict[Path, list[dict[str, float | str]]] = {base: [], tree: []}
    for _ in range(repeats):
        for each in (base, tree):
            runs[each].append(measure(each))
            print(f"{each.name}: {runs[each][-1]}", file=sys.stderr)
    table = []
    # A queued request waits milliseconds to minutes: its budget covers the fair queue's bookkeeping
    # and the wait histogram FIFO had not (about 2 µs of prometheus_client); a free slot's is noise.
    for loop, scenario, budget in (
        ("queued", "admission, 16 clients over 4 keys, 4 slots", 10.0),
        ("fast", "admission, a free slot (try_acquire + release)", 0.5),
    ):
        before = statistics.median(float(run[loop]) for run in runs[base])
        after = statistics.median(float(run[loop]) for run in runs[tree])
        table.append(
            Row(
                scenario,
                f"CPU µs per request (Minato: {tree.name}, direct: FIFO {base.name})",
                after,
                "µs",
                before,
                f"≤ FIFO + {budget:g} µs",
                after <= before + budget,
            )
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__)
    parser.add_argument("base", type=Path, help="the tree with the FIFO admission (a worktree of the base commit)")
    parser.add_argument("tree", type=Path, nargs="?", default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    print(render_text(rows(args.base.resolve(), args.tree.resolve(), args.repeats), machine_info(os.getloadavg())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
