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
make bench                                        # full run, about 15-20 minutes
.venv/bin/python -m bench --quick                 # about 8 minutes, noisier
.venv/bin/python -m bench --quick --only paced    # one part (see below; --only may be repeated)
.venv/bin/python -m bench --only whole16 --only paced --profile profile.txt   # py-spy summaries too
.venv/bin/python -m bench --markdown docs/benchmarks.md   # also rewrite this page
```

The benchmark starts the Ollama stand-in (`tests/support/standin`) and Minato (`python -m minato serve`,
one worker, `MINATO_LOG_LEVEL=warning` unless a row says otherwise) as real processes on loopback,
and drives both with its own load generator (`bench/load.py`: uvloop, a raw asyncio protocol and
httptools, keep-alive connections), so every time is measured outside Minato. Three references run
next to Minato in the same run: Debian's **nginx** (`/usr/sbin/nginx`, one worker,
`proxy_buffering off`, its config, pid, logs and temp files in a temporary directory), the **floor
relay** (`bench/floor_relay.py`: uvloop + httptools protocols, no framework, keep-alive connections to
the stand-in pooled, each of its body chunks written to the client's transport from the upstream
protocol's data callback as one chunked frame, reading paused while the client's buffer is above
64 KB; no auth, limits, metrics or logs) and the **bare relay** (`bench/bare_relay.py`: about 50 lines
of Litestar + aiohttp under uvicorn with Minato's server settings, httptools, uvloop, one worker, log
level warning). It needs no network and no GPU.

The parts (`--only`, may be repeated): `core` (1 and 32 clients, the long relay, the front doors),
`paced` (200 paced streams direct, through nginx, the floor relay, the bare relay and Minato),
`whole16` (whole answers at 16 clients, Minato's default features against the floor and the bare
relay), `pool` (backends, failover, Redis), `slowreader` (one client reading a 100,000-token answer
10x slower than the stand-in writes it), `features` (each feature's CPU per request), `concurrency`
(1,000 slow streams, then 5,000). `--profile PATH` adds, after each of
the paced, whole16 and concurrency parts' measurements, an unmeasured repeat of its load with
`py-spy record` attached to Minato (and to the floor and bare relays at 16 clients, and during conversation
turns), and writes each run's top entries by own time, by total time and by owner (the innermost
Minato source file on the stack, else Litestar or uvicorn), with CPU µs per request or token:
the per-feature cost. py-spy is in the `bench` group (`make install`) and needs ptrace rights over
Minato (root, or `kernel.yama.ptrace_scope` 0)."""

HOW_TO_READ: Final = """\
- **Minato** is the figure through Minato (`GET /{model}?message=hi`, `GET /stream/{model}?message=hi`);
  **Direct** is the same load sent in the same run straight to the stand-in's `POST /api/chat`
  (`stream` false / true), i.e. what a client calling Ollama itself would see. **vs direct** is
  Minato / direct, and for latencies also the time Minato adds.
- *Clients* are keep-alive connections in a closed loop (each sends its next request when its
  last answer is complete); requests/s is throughput at that concurrency.
- *TTFT* is the time from sending the request to the first byte of the response body (the first
  token of a stream).
- *CPU* is the server's user + system time from `/proc/<pid>/stat` (Minato's one process; nginx's
  master and worker) over the measured run, divided by requests or relayed tokens; it has no
  direct counterpart.
- Load generator, stand-in and Minato share the machine's cores, so absolute figures move with
  the machine; the ratios to the direct run, and to nginx and the bare relay, are the part that
  carries over.
- In the rows of nginx, the floor relay and the bare relay the **Minato** column holds *their*
  figure (the metric says whose)."""

HOW_REFERENCES: Final = """\
- *paced tokens*: 200 connections, then one streamed request on each at once for
  `standin/paced:100x20` (100 tokens, the first at once and then one every 20 ms: ideal 1.98 s),
  as a real model paces them. Sent straight to the stand-in's `POST /api/chat` (*direct*), through
  nginx (`POST /api/chat`, proxied), through the floor relay and the bare relay (each on
  `GET /stream/{model}?message=hi`, the request Minato's own route takes, and `POST /api/chat`
  passed through) and through Minato with its default features on (`MINATO_LOG_LEVEL=info`, metrics,
  a key, a rate limit, as in the 16-client row below) on `GET /stream/{model}?message=hi`, the native
  door's `POST /api/chat` and OpenAI's `POST /v1/chat/completions` (streamed). The nine take turns,
  one burst each per round, in rotating order (3 rounds, quick 1). *CPU per relayed token* is the
  server's user + system time (all its processes: nginx's master and worker) over its bursts,
  divided by the tokens it relayed; connection and stream set-up are included, spread over the
  100 tokens. *Peak RSS* is each server's `VmRSS` polled every 20 ms during its bursts (nginx's
  master only). Minato's routes are held to at most 1.2x nginx's CPU per token, p99 completion
  within 1.1x direct's (same run), and no errors.
- *whole answer, 16 clients*: 16 keep-alive clients in a closed loop of `GET /{model}?message=hi`
  (20 tokens) to a Minato with its default features on: `MINATO_LOG_LEVEL=info` (one request log
  line per answer; the row *request log lines per request* proves it), metrics (always on), a key
  (`MINATO_API_KEYS`, sent as `Authorization: Bearer`) and a rate limit
  (`MINATO_RATE_LIMIT_PER_MINUTE=1000000000`: checked on every request, never reached), and the
  same request to the floor relay and the bare relay. The three take 6 turns of 2 s each (quick 2 of
  1.5 s), in rotating order; Minato's requests/s is held to at least 0.8x the floor relay's and at
  least the bare relay's (1.0x). *Direct* is the stand-in's `POST /api/chat` (`stream` false) at 16
  clients.
- *1 client* (core rows): the added time to a stream's first byte (`GET /stream`, and the native
  door streamed) and the added p50 of a whole answer (`GET /`, and the native door whole) are each
  held to at most 0.3 ms over direct; the long relay to at most 20 µs of CPU per token.
- *a slow reader*: a stand-in of its own (fresh, so no earlier traffic grew its sockets' buffers),
  one client asking `standin/tokens:100000` on the native door (`POST /api/chat` streamed, about
  13 MB of NDJSON: Ollama's bytes as they are). Read first straight from the stand-in as fast as it
  comes (*direct*, which sets the pace), then through the floor relay and through Minato (log level
  warning) at a tenth of that rate (the client stops reading its socket until its budget allows
  more, so the kernel's buffers fill as behind a slow network; at most 60 s). Minato's *RSS growth*
  (peak during the read, polled every 20 ms, less the RSS just before it) is held below 2 MB, and the
  pause must reach Ollama: every 50 ms during the read the benchmark asks the stand-in for the bytes
  its stream's socket could not send yet (`GET /_standin/streams`, `write_buffered`: above 0 once the
  kernel's send buffer is full), whose peak is held above 0, next to the share of looks that found
  its send buffer full. The floor relay's rows are the reference (no verdict).
- *per-feature cost* (`features`): three stand-ins of their own with the model installed, one with it
  loaded. Minatos differing by one feature each: a baseline (log level warning, no key, no limit, one
  backend), a second baseline (the *control*: the measurement's noise), a key (`MINATO_API_KEYS`,
  sent), a rate limit (over the key: it is per key), the request log line (`MINATO_LOG_LEVEL=info`),
  three backends (the model loaded on one; `MINATO_BACKEND_PARALLEL=32` keeps every request there,
  so the difference is the routing), and on the baseline's Minato the same request as a conversation
  turn (`&session=`, a session per client of 10 turns each). They take turns of 16-client whole
  answers (8 rounds of 1 s, quick 3 of 0.5 s, rotating order); each cost is the median over the
  rounds of the difference in CPU per request to its reference in the same round. What has no off
  switch is read from a py-spy profile (10 s, quick 5 s) of the baseline's load: the share of samples
  with `minato/observability/metrics.py` or `prometheus_client` on the stack (*metrics*), or
  `minato/core/admission.py` (*fair admission*), times the CPU per request. These rows are notes, with
  no verdict."""

HOW_CONCURRENCY: Final = """\
The concurrency rows have their own stand-in and a Minato told to admit them all:
`MINATO_MAX_GENERATIONS=5000` (generations at once; more would queue) and
`MINATO_MAX_CONNECTIONS=5000` (connections to Ollama from the worker). Client connections are
capped at `MINATO_MAX_CLIENT_CONNECTIONS`, by default half the open-file limit less a reserve of 64,
which `minato serve` raises to the hard limit at start: each stream holds two descriptors (the
client's socket and the one to Ollama), so **5,000 streams on one worker need an open-file limit of
at least 10,080** (`ulimit -n 16384` before `minato serve`, `LimitNOFILE=` in a systemd unit,
`--ulimit nofile=16384:16384` for a container). The benchmark raises its own soft limit to the hard
one before starting anything (children inherit it); below 10,080 the 5,000-stream rows read *n/a*.
- *1,000 slow streams* opens 1,000 connections, then asks for a 20-token answer paced 50 ms per
  token (ideal 0.95 s) on all of them at once; completion times count from each request's write.
  p99 completion is held to 1.2x direct's.
- *5,000 slow streams*, in a Minato started for them (not the one the 1,000 streams grew): 6 tokens
  3 s apart (ideal 15 s), the clients arriving evenly over 10 s
  (500 a second), each opening its connection as it arrives: all 5,000 at one instant would have
  Minato open 5,000 connections to the stand-in at once, beyond its listen backlog of 1,024, and a
  dropped SYN is retried only after 1 s, then 3 s, past `MINATO_CONNECT_TIMEOUT`. Held to no errors
  and Minato's peak RSS at most 150 MB; *streams relaying at once* (between their first token and
  their end, as the client saw them) must reach all 5,000, else the RSS figure is for fewer.
- Peak RSS is Minato's `VmRSS`, polled every 20 ms during a run. *CPU per token* differs from the
  long relay's: paced tokens arrive one per read, so nothing is batched and each token pays the
  whole relay path (stream set-up included), as with a real model's pace.
- Between the direct run and Minato's, the benchmark waits until the stand-in is idle (it is
  still closing the direct run's thousands of connections, and would accept slowly)."""


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
the own route's CPU per relayed token (≤ 1.0x), to at most 0.3 ms added p50 for a whole answer and
0.3 ms added time to a stream's first byte.
When the stand-in does not answer a door's route (it answered 501 on `/v1` before it spoke OpenAI),
that door's rows read *n/a* with the reason."""


HOW_POOL: Final = """\
The pool and shared-state rows start their own stand-ins and Minatos (log level warning), and Redis.
- *pool routing*: the model is installed on three stand-ins and loaded on one. A Minato with that
  one backend, one with all three, and a second one-backend Minato as a control take turns of
  16-client closed-loop `GET /{model}?message=hi` (rotating order; 21 rounds of 1 s, quick 12 of
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
  and to one with the default SQLite store (a new file per run), taking turns (6 rounds of 2 s,
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
        "## How the targets of the hot path are measured (nginx, the floor relay, the bare relay)\n\n"
        f"{HOW_REFERENCES}\n\n"
        f"## How the concurrency rows are measured\n\n{HOW_CONCURRENCY}\n\n"
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
