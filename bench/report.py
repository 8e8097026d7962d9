"""The result table: one row per (scenario, metric), Minato next to the direct baseline."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = ["Row", "markdown_table", "render_markdown", "render_text", "write_markdown"]

Unit = Literal["req/s", "ms", "s", "tok/s", "µs", "MB", "count", "ratio"]
HEADERS: Final = ("Scenario", "Metric", "Minato", "Direct", "vs direct", "Target", "Result")


@dataclass(frozen=True)
class Row:
    """One measured figure; ``direct`` is the same figure with the stand-in called directly."""

    scenario: str
    metric: str
    minato: float
    unit: Unit
    direct: float | None = None
    target: str = ""
    passed: bool | None = None
    missing: str = ""
    """Why the figure could not be measured (the row then shows ``n/a`` and this reason)."""

    def cells(self) -> tuple[str, ...]:
        verdict = "" if self.passed is None else ("PASS" if self.passed else "MISS")
        direct = "—" if self.direct is None else _number(self.direct, self.unit)
        minato = f"n/a ({self.missing})" if self.missing else _number(self.minato, self.unit)
        return (
            self.scenario,
            self.metric,
            minato,
            direct,
            self._comparison(),
            self.target,
            verdict,
        )

    def _comparison(self) -> str:
        if self.direct is None or self.missing or self.unit in ("count", "ratio"):
            return ""
        ratio = self.minato / self.direct if self.direct else math.inf
        if self.unit == "ms":
            # Latency overhead reads best as time added; the ratio alone hides its scale.
            return f"{self.minato - self.direct:+.2f} ms ({ratio:.2f}x)"
        return f"{ratio:.2f}x"


_FORMATS: Final[dict[str, str]] = {
    "count": "{:,.0f}",
    "ratio": "{:.2f}x",
    "req/s": "{:,.0f} req/s",
    "tok/s": "{:,.0f} tok/s",
    "s": "{:.3f} s",
    "ms": "{:.2f} ms",
    "µs": "{:.1f} µs",
    "MB": "{:.1f} MB",
}


def _number(value: float, unit: Unit) -> str:
    return "n/a" if math.isnan(value) else _FORMATS[unit].format(value)


def _grid(rows: list[Row]) -> list[tuple[str, ...]]:
    grid: list[tuple[str, ...]] = []
    previous = ""
    for row in rows:
        cells = row.cells()
        # Name each scenario once: the table is long and repeated labels drown the numbers.
        if cells[0] == previous:
            cells = ("", *cells[1:])
        previous = row.scenario
        grid.append(cells)
    return grid


def render_text(rows: list[Row], machine: dict[str, str]) -> str:
    """A plain-text table for the terminal, preceded by the machine it ran on."""
    grid = [HEADERS, *_grid(rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADERS))]
    lines = [f"{key + ':':<10} {value}" for key, value in machine.items()]
    lines.append("")
    for index, line in enumerate(grid):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines.extend("| " + " | ".join(cells) + " |" for cells in _grid(rows))
    return "\n".join(lines)


HOW_TO_RUN: Final = """\
```sh
make bench                                      # full run, about 2-3 minutes
.venv/bin/python -m bench --quick               # about 1 minute, noisier
.venv/bin/python -m bench --quick --only pool   # only the pool and shared-state rows
.venv/bin/python -m bench --markdown docs/benchmarks.md   # also rewrite this page
```

The benchmark starts the Ollama stand-in (`tests/standin`) and Minato (`python -m minato serve`,
one worker, `MINATO_LOG_LEVEL=warning`) as real processes on loopback, and drives both with its own
load generator (`bench/load.py`: uvloop, a raw asyncio protocol and httptools, keep-alive
connections), so every time is measured outside Minato. It needs no network and no GPU."""

HOW_TO_READ: Final = """\
- **Minato** is the figure through Minato (`GET /{model}?message=hi`, `GET /stream/{model}?message=hi`);
  **Direct** is the same load sent in the same run straight to the stand-in's `POST /api/chat`
  (`stream` false / true), i.e. what a client calling Ollama itself would see. **vs direct** is
  Minato / direct, and for latencies also the time Minato adds.
- *Clients* are keep-alive connections in a closed loop (each sends its next request when its
  last answer is complete); requests/s is throughput at that concurrency.
- *TTFT* is the time from sending the request to the first byte of the response body (the first
  token of a stream).
- *CPU* is the Minato process's user + system time from `/proc/<pid>/stat` over the measured run,
  divided by requests or relayed tokens; it has no direct counterpart.
- *1,000 slow streams* opens 1,000 connections, then asks for a 20-token answer paced 50 ms per
  token (ideal 1.0 s) on all of them at once; completion times count from each request's write.
  Peak RSS is Minato's `VmRSS`, polled every 20 ms during that run. Its *CPU per token* differs
  from the long relay's: paced tokens arrive one per read, so nothing is batched and each token
  pays the whole relay path (stream set-up included), as with a real model's pace.
- Load generator, stand-in and Minato share the machine's cores, so absolute figures move with
  the machine; the ratios to the direct run are the part that carries over.
- The *log level info* rows repeat the 32-client non-streamed run with Minato's default logging,
  which writes one JSON access line per request."""


HOW_DOORS: Final = """\
The door rows send a client's own request to Minato's front doors, `POST /api/chat` (Ollama's API,
`stream` false and true) and `POST /v1/chat/completions` (OpenAI's, `stream` true), with the body
`{"model", "messages": [hi], "stream"}`; **Direct** is the very same request sent to the stand-in's
route of the same name, so the difference is what the door adds: reading the body, the checks, a
generation slot, and relaying Ollama's bytes while watching them for token counts and the stream's
end. Latencies and *TTFT* are measured as in the rows above (one keep-alive client; TTFT is the first
body byte after the headers, for NDJSON and SSE alike). An OpenAI stream whose client did not ask
for usage is sent to Ollama with `stream_options.include_usage` (so Minato can count tokens) and the
extra frame is dropped on the way back: the Minato figure includes that, the direct one cannot.
The doors' *relay one 5,000-token stream* rows repeat the long relay through the door, taking turns
with Minato's own `GET /stream/{model}` (five rounds) so that both meet the same machine load; their
CPU per token is divided by the own route's (*/ GET /stream's*). The native door is held to at most
the own route's CPU per relayed token (≤ 1.0x) and to at most 0.5 ms added p50 for a whole answer.
When the stand-in does not answer a door's route (it answered 501 on `/v1` before it spoke OpenAI),
that door's rows read *n/a* with the reason."""


HOW_POOL: Final = """\
The pool and shared-state rows start their own stand-ins and Minatos (log level warning), and Redis.
- *pool routing*: the model is installed on three stand-ins and loaded on one. A Minato with that
  one backend, one with all three, and a second one-backend Minato as a control take turns of
  16-client closed-loop `GET /{model}?message=hi` (rotating order; 30 rounds of 1 s, quick 12 of
  0.5 s). `MINATO_BACKEND_PARALLEL=32`, above the client count, keeps every request of the pool on the
  loaded backend, so all three send the same traffic to the same stand-in and differ by the routing
  (and the probes of two more backends). Figures are medians over the rounds; *added CPU* is the
  median of the rounds' differences, held to ≤ 50 µs. The *control* row is the same difference
  between two processes of one configuration: the resolution of this measurement on that machine;
  when it is itself above 50 µs the row has no verdict (*unresolved*).
- *pool failover*: two stand-ins with the model loaded, one client sending whole answers back to
  back for 3 s (quick 1 s), a SIGKILL to one stand-in, 3 s more. No request may fail (a whole answer
  fails over before its first byte). The slowest request in flight at the kill or started within
  100 ms after it is compared with the p50 before; next to it, the slowest of the 100 ms before the
  kill shows what the machine's noise alone does. *Kill to marked down* runs until
  `minato_backend_up` of that backend reads 0 in `/metrics` (polled every 10 ms throughout; not
  `/ready`, which probes every backend when asked), and `/ready` must then list it `down` or
  `cooling`; *the stand-in's exit* is when the kernel had ended the process, after which its port
  refuses. `MINATO_OLLAMA_PROBE_INTERVAL` is 5 s (the default, set explicitly): the failing request
  finds the dead backend, not the probe. Three runs (quick one): failures summed, the rest medians.
- *conversation turn*: one client, `GET /{model}?message=hi&session=...` in sessions of 10 turns,
  to a Minato with `MINATO_REDIS_URL` (a `redis-server` on a free loopback port, persistence off)
  and to one with the default SQLite store (a new file per run), taking turns (10 rounds of 2 s,
  quick 6 of 1 s); *added p50* is the median of the rounds' differences. Without a `redis-server`,
  or when the Minato given `MINATO_REDIS_URL` wrote no key to Redis in its warm-up, the rows read
  *n/a* with the reason."""


def render_markdown(rows: list[Row], machine: dict[str, str], when: dt.datetime) -> str:
    """The whole ``docs/benchmarks.md`` page: how to run, the table, the machine, how to read it."""
    machine_lines = "\n".join(f"- **{key}**: {value}" for key, value in machine.items())
    return (
        "# Benchmarks: Minato's overhead\n\n"
        "How much time, CPU and memory Minato adds in front of Ollama, measured against the\n"
        "Ollama stand-in so that the model itself costs nothing.\n\n"
        f"## How to run\n\n{HOW_TO_RUN}\n\n"
        f"## Results ({when:%Y-%m-%d %H:%M} UTC)\n\n{markdown_table(rows)}\n\n"
        f"Machine:\n\n{machine_lines}\n\n"
        f"## How to read the table\n\n{HOW_TO_READ}\n\n"
        f"## How the doors are measured\n\n{HOW_DOORS}\n\n"
        f"## How the pool and shared-state rows are measured\n\n{HOW_POOL}\n"
    )


#: Where the hand-written notes of an existing page begin; they are kept when the page is rewritten.
NOTES_HEADING: Final = "\n## Notes"


def write_markdown(path: Path, rows: list[Row], machine: dict[str, str]) -> None:
    """Write the page with these results, keeping the notes an earlier page holds below its tables."""
    earlier = path.read_text() if path.exists() else ""
    start = earlier.find(NOTES_HEADING)
    notes = earlier[start:] if start >= 0 else ""
    path.write_text(render_markdown(rows, machine, dt.datetime.now(dt.UTC)) + notes)
