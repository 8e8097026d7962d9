"""``--profile PATH``: py-spy against a server during extra, unmeasured runs of chosen scenarios.

Each profiled run repeats a measured scenario's load with ``py-spy record`` attached to the server
(250 samples a second, every thread; samples of a thread waiting idle, the event loop in ``epoll``,
are left out by py-spy), so no figure of the table is taken while py-spy pauses the process to
read its stacks. The summary of each run has three tables: the top entries by own time (the line
a sample was in), by total time (every function on the sampled stack, once per sample), and by
owner, which charges each sample to the innermost Minato source file on its stack (with whatever
libraries that file called) or else to Litestar or uvicorn around Minato's code. Each share is
also turned into CPU µs per request (or per token), with the CPU the server spent during that run:
the owner table is the per-feature cost (``security.py``: auth and the rate limit's key;
``metrics.py``; ``log.py``: the request log; ``sessions/`` and ``state/``: a conversation turn,
the rate limit's counters; and so on).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.processes import cpu_seconds

__all__ = ["Profiler", "py_spy"]

RATE_HZ: Final = 250
TOP: Final = 25
STOP_TIMEOUT_S: Final = 30.0
ATTACH_S: Final = 0.3  # py-spy reads the target's memory maps before its first sample
_FRAME: Final = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_MINATO: Final = re.compile(r"(?:^|/)(minato/.+\.py)$")
_RUNNER: Final = "Runner.run (asyncio/runners.py"
EVENT_LOOP: Final = "(the event loop's own C code: polling, socket reads and writes, scheduling)"
FRAMEWORKS: Final = ("litestar", "uvicorn")


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the dev group installs it), else on ``PATH``."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Run:
    """One profiled run: what the caller reports about its load, and what py-spy saw."""

    name: str
    units: int = 0  # requests or tokens served during the run
    unit: str = "request"
    cpu_s: float = 0.0
    stacks: Counter[tuple[str, ...]] = field(default_factory=Counter)
    error: str = ""


#: Where a thread waits on a lock, which py-spy does not always tell from running (a thread pool's
#: worker waiting for work): such samples are idle time, not CPU.
_WAITING: Final = (
    "_worker (concurrent/futures/thread.py:81)",
    "Condition.wait (threading.py:327)",
    # The SQLite home's own thread, waiting for work (minato.state.sqlite.database).
    "Database._serve (minato/state/sqlite/database.py:145)",
)


def _parse(raw: str) -> Counter[tuple[str, ...]]:
    """py-spy's ``--format raw`` (collapsed stacks: ``frame;frame;... count``, outermost first),
    without the samples of a thread waiting on a lock."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stack = tuple(frames.split(";"))
            if stack[-1] not in _WAITING:
                stacks[stack] += int(count)
    return stacks


def _function(frame: str) -> str:
    """``function (file:line)`` without its line: every line of a function counts as that function."""
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


class Profiler:
    """Collects profiled runs; :meth:`write` puts their summaries in one text file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: list[Run] = []
        self.binary = py_spy()

    @contextlib.asynccontextmanager
    async def record(self, name: str, pid: int) -> AsyncIterator[Run]:
        """Sample ``pid`` for the block; the caller sets the yielded run's ``units`` (and ``unit``)."""
        run = Run(name)
        self.runs.append(run)
        if self.binary is None:
            run.error = "py-spy not found (it is in the dev group: make install)"
            yield run
            return
        with tempfile.TemporaryDirectory(prefix="minato-bench-profile-") as tmp:
            out = Path(tmp) / "profile.txt"
            log = Path(tmp) / "py-spy.log"
            argv = [self.binary, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw"]
            with log.open("wb") as log_file:
                spy = await asyncio.create_subprocess_exec(
                    *argv, "--output", str(out), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
                )
            try:
                await asyncio.sleep(ATTACH_S)
                cpu_before = cpu_seconds(pid)
                yield run
                run.cpu_s = cpu_seconds(pid) - cpu_before
            finally:
                # SIGINT is py-spy's Ctrl-C: it stops sampling and writes the file.
                spy.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(spy.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    spy.kill()
                    await spy.wait()
            if out.exists():
                run.stacks = _parse(out.read_text())
            if not run.stacks:
                run.error = f"py-spy wrote no samples: {log.read_text(errors='replace')[-600:].strip()}"

    def write(self) -> None:
        self.path.write_text("\n\n".join(_summary(run) for run in self.runs) + "\n")


def _table(counts: Counter[str], total: int, per_unit_us: float, unit: str) -> list[str]:
    lines = []
    for key, count in counts.most_common(TOP):
        share = count / total
        cost = f"  {share * per_unit_us:8.1f} µs/{unit}" if not math.isnan(per_unit_us) else ""
        lines.append(f"  {share * 100:5.1f} %{cost}  {key}")
    return lines


def _below_loop(stack: tuple[str, ...]) -> tuple[str, ...]:
    """The part of a stack below the event loop's runner (``<module>``, ``main``, uvicorn's ``run`` go).

    A stack that ends at the runner is time in the loop's own C code (uvloop: polling, transports'
    reads and writes, callbacks' scheduling): it is kept as one entry.
    """
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].startswith(_RUNNER):
            return stack[index + 1 :] or (EVENT_LOOP,)
    return stack


def _owner(stack: tuple[str, ...]) -> str:
    """Who a sample's time is charged to: the innermost Minato file, Litestar or uvicorn on the stack.

    Libraries a Minato file calls (aiohttp, structlog, msgspec, sqlite3, the standard library) count
    to that file; what the framework or the server does around Minato's code counts to them; a
    sample with neither (an event-loop callback: aiohttp reading Ollama's answer, a timer; a thread
    pool's worker waking up) is named after the file of its innermost frame.
    """
    for frame in reversed(stack):
        match = _FRAME.match(frame)
        path = match["file"] if match else ""
        if found := _MINATO.search(path):
            return found[1]
        for framework in FRAMEWORKS:
            if path.startswith(f"{framework}/") or f"/{framework}/" in path:
                return f"{framework} (around Minato's code)"
    leaf = _FRAME.match(stack[-1])
    return f"outside any Minato frame: {leaf['file'] if leaf else stack[-1]}"


def _summary(run: Run) -> str:
    head = f"== {run.name}"
    if run.error:
        return f"{head}\n  (no profile: {run.error})"
    total = sum(run.stacks.values())
    per_unit_us = run.cpu_s / run.units * 1e6 if run.units else math.nan
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    for full, count in run.stacks.items():
        stack = _below_loop(full)
        own[stack[-1]] += count
        for function in {_function(frame) for frame in stack}:
            inclusive[function] += count
        owners[_owner(stack)] += count
    cpu = f"{per_unit_us:.1f} µs of CPU per {run.unit} (py-spy's pauses included)" if run.units else "no unit count"
    return "\n".join(
        [
            f"{head}: {total:,} busy samples at {RATE_HZ} Hz, {run.units:,} {run.unit}s, {cpu}",
            "-- by own time (function and line)",
            *_table(own, total, per_unit_us, run.unit),
            "-- by total time (function, with everything it called; below the event loop's runner)",
            *_table(inclusive, total, per_unit_us, run.unit),
            "-- by owner: the innermost Minato source file (with the libraries it calls), else the framework",
            *_table(owners, total, per_unit_us, run.unit),
        ]
    )
