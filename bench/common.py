"""What every part of the benchmark shares: the plan of a run, the models, the targets, and the
helpers that measure a phase (a closed loop, Minato's CPU and memory, a stand-in of a row's own).

Direct first, Minato right after, on the same stand-in process: the baseline shares the run's
machine state, and its figure sits next to Minato's in the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from bench.load import (
    Pool,
    Sample,
)
from bench.processes import cpu_seconds, rss_bytes
from bench.report import Row, Unit
from tests.support.standin.process import StandInProcess

__all__ = [
    "FULL",
    "QUICK",
    "Measured",
    "Plan",
    "Tally",
    "backend_name",
    "checked",
    "closed_loop",
    "errors_row",
    "log",
    "median_of_pairs",
    "peak_rss",
    "settle",
    "standin_process",
    "unmeasured",
]


SHORT_MODEL: Final = "standin/tokens:20"
LONG_TOKENS: Final = 5000
LONG_MODEL: Final = f"standin/tokens:{LONG_TOKENS}"
RSS_POLL_S: Final = 0.02
RELAY_ROUNDS: Final = 5  # turns the long relays take (see _repeat)
MB: Final = 1024 * 1024
MS: Final = 1000.0

TARGET_ADDED_MS: Final = 0.3  # first byte of a stream, p50 of a whole answer, at 1 client (own routes and native door)
TARGET_CPU_US_PER_TOKEN: Final = 20.0
TARGET_RSS_MB: Final = 150.0
TARGET_P99_RATIO: Final = 1.2  # 1,000 slow streams: p99 completion over direct's
TARGET_DOOR_CPU_RATIO: Final = 1.0  # the native door's CPU per relayed token / GET /stream's
TARGET_ROUTING_CPU_US: Final = 50.0  # Minato CPU per request, 3 backends over 1

POOL_CLIENTS: Final = 16
PROBE_INTERVAL_S: Final = 5.0  # MINATO_OLLAMA_PROBE_INTERVAL in the failover row (the default, set explicitly)
FAILOVER_WINDOW_S: Final = 0.1  # "right after the kill": requests in flight then or started this soon after
DOWN_POLL_S: Final = 0.01
EXIT_POLL_S: Final = 0.001
DOWN_WAIT_S: Final = 2 * PROBE_INTERVAL_S + 1.0  # two probes at the latest: past that it is not coming
TURNS_PER_SESSION: Final = 10
REDIS_SERVER: Final = "redis-server"

BENCH_KEY: Final = "minato-bench-key"  # a user key of the benchmark's own Minato, on loopback only
HIGH_RATE: Final = 1_000_000_000  # per minute: the limit is checked on every request and never reached
#: Minato's default features, with MINATO_LOG_LEVEL=info: a key required, a rate limit checked (metrics are always on).
DEFAULT_FEATURES: Final = {"MINATO_API_KEYS": BENCH_KEY, "MINATO_RATE_LIMIT_PER_MINUTE": str(HIGH_RATE)}
AUTH: Final = {"Authorization": f"Bearer {BENCH_KEY}"}
REQUEST_LINE: Final = re.compile(rb'"event": ?"request"')

NATIVE_CHAT: Final = "/api/chat"
OPENAI_CHAT: Final = "/v1/chat/completions"
NO_V1: Final = "stand-in has no /v1"


@dataclass(frozen=True)
class Plan:
    """How long each phase runs; every phase is also capped by a request count."""

    latency_s: float  # 1-client phases
    load_s: float  # 32-client phases
    warm_s: float
    max_requests: int
    relay_reps: int  # per long relay: enough that 10 ms CPU clock ticks move its CPU figure by a few % at most
    pool_rounds: int  # rounds of turns of the routing row (a multiple of 3: each Minato goes first as often)
    pool_leg_s: float  # one turn of the routing row
    turn_rounds: int  # rounds of turns of the Redis row (even: each goes first as often)
    turn_leg_s: float  # one turn of the Redis row
    failover_s: float  # the failover row's stream before the kill, and again after it
    failover_reps: int
    paced_rounds: int  # turns of each subject of the paced-token rows (one burst of 200 streams each)
    whole_rounds: int  # turns of Minato and the bare relay in the 16-client whole-answer rows
    whole_leg_s: float  # one such turn
    many_streams: int  # the concurrency row's streams at once
    profile_s: float  # each profiled run of a closed-loop load (--profile, and the per-feature part's profile)
    feature_rounds: int  # turns of each variant of the per-feature A/B runs
    feature_leg_s: float  # one such turn


FULL: Final = Plan(
    latency_s=6.0,
    load_s=8.0,
    warm_s=1.5,
    max_requests=200_000,
    relay_reps=30,
    pool_rounds=21,
    pool_leg_s=1.0,
    turn_rounds=6,
    turn_leg_s=2.0,
    failover_s=3.0,
    failover_reps=3,
    paced_rounds=3,
    whole_rounds=6,
    whole_leg_s=2.0,
    many_streams=5000,
    profile_s=10.0,
    feature_rounds=8,
    feature_leg_s=1.0,
)
QUICK: Final = Plan(
    latency_s=1.5,
    load_s=2.5,
    warm_s=0.5,
    max_requests=50_000,
    relay_reps=10,
    pool_rounds=12,
    pool_leg_s=0.5,
    turn_rounds=6,
    turn_leg_s=1.0,
    failover_s=1.0,
    failover_reps=1,
    paced_rounds=1,
    whole_rounds=2,
    whole_leg_s=1.5,
    many_streams=5000,
    profile_s=5.0,
    feature_rounds=3,
    feature_leg_s=0.5,
)


@dataclass(frozen=True)
class Measured:
    sample: Sample
    cpu_s: float  # CPU the metered process spent during the measured part (0 when unmetered)


def log(message: str) -> None:
    # Progress goes to stderr so stdout holds only the table.
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def closed_loop(port: int, raw: bytes, clients: int, seconds: float, plan: Plan, pid: int | None) -> Measured:
    pool = await Pool.open(port, clients)
    try:
        await pool.warm(raw, per_client=200 if clients == 1 else 20, max_seconds=plan.warm_s)
        cpu_before = cpu_seconds(pid) if pid else 0.0
        sample = await pool.run(raw, seconds, plan.max_requests)
        cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    finally:
        pool.close()
    return Measured(checked(sample, port), cpu)


def checked(sample: Sample, port: int) -> Sample:
    """Stop the benchmark when nothing succeeded: a table of n/a would hide the cause."""
    if not sample.count:
        raise RuntimeError(f"every request to port {port} failed ({sample.errors} errors)")
    return sample


def errors_row(scenario: str, direct: Sample, minato: Sample) -> list[Row]:
    """An errors row only when something failed: a clean run would only add noise."""
    if not (direct.errors or minato.errors):
        return []
    return [Row(scenario, "errors", minato.errors, "count", direct.errors, "0", minato.errors == 0)]


def unmeasured(scenario: str, metrics: list[tuple[str, Unit]], why: str) -> list[Row]:
    return [Row(scenario, metric, math.nan, unit, math.nan, missing=why) for metric, unit in metrics]


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[int]]:
    """Poll ``VmRSS`` in the background; the yielded list holds the peak when the block ends."""
    peak = [rss_bytes(pid)]
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_POLL_S)

    task = asyncio.create_task(poll())
    try:
        yield peak
    finally:
        stop.set()
        await task
        peak[0] = max(peak[0], rss_bytes(pid))


SETTLE_STEP_S: Final = 0.25
SETTLE_IDLE: Final = 0.05  # of one core
SETTLE_MAX_S: Final = 15.0


async def settle(pid: int) -> None:
    """Wait (at most :data:`SETTLE_MAX_S`) until ``pid`` is nearly idle.

    After a burst of thousands of streams the stand-in is still closing their connections; until it
    is done it accepts slowly, its listen backlog (1,024) overflows under the next burst's connects,
    and a dropped SYN is retried only a second later: the next run would measure that.
    """
    deadline = time.perf_counter() + SETTLE_MAX_S
    while time.perf_counter() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(SETTLE_STEP_S)
        if cpu_seconds(pid) - before <= SETTLE_IDLE * SETTLE_STEP_S:
            return


@dataclass
class Tally:
    """What the rounds of one subject added up to."""

    sample: Sample = field(default_factory=Sample)
    cpu_s: float = 0.0
    peak_rss: int = 0  # bytes, over the rounds that polled it

    def add(self, part: Sample, cpu_s: float) -> None:
        self.sample.results += part.results
        self.sample.errors += part.errors
        self.sample.elapsed += part.elapsed
        self.cpu_s += cpu_s


def standin_process(stack: contextlib.ExitStack, *args: str) -> StandInProcess:
    standin = StandInProcess(*args)
    stack.callback(standin.stop)  # stop() after kill() is a no-op
    return standin


def backend_name(standin: StandInProcess) -> str:
    """How Minato names a backend (``host:port``)."""
    return urlsplit(standin.url).netloc


def median_of_pairs(a: list[float], b: list[float]) -> float:
    """The median of ``b - a`` taken round by round (both met the same machine in each round)."""
    return statistics.median(y - x for x, y in zip(a, b, strict=True))
