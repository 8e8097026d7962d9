"""The measurements: each scenario runs against the stand-in directly, then through Minato.

Direct first, Minato right after, on the same stand-in process: the baseline shares the run's
machine state, and its figure sits next to Minato's in the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from bench.load import Pool, Sample, burst, chat_request, get_request, percentile
from bench.processes import Minato, cpu_seconds, rss_bytes
from bench.report import Row

__all__ = ["Plan", "answer_rows", "relay_rows", "slow_stream_rows"]

SHORT_MODEL: Final = "standin/tokens:20"
LONG_TOKENS: Final = 5000
LONG_MODEL: Final = f"standin/tokens:{LONG_TOKENS}"
SLOW_TOKENS: Final = 20
SLOW_GAP_S: Final = 0.050
SLOW_MODEL: Final = f"standin/paced:{SLOW_TOKENS}x{SLOW_GAP_S * 1000:.0f}"
SLOW_IDEAL_S: Final = SLOW_TOKENS * SLOW_GAP_S
SLOW_TIMEOUT_S: Final = 30.0
RSS_POLL_S: Final = 0.02
MB: Final = 1024 * 1024
MS: Final = 1000.0

TARGET_ADDED_MS: Final = 1.0
TARGET_CPU_US_PER_TOKEN: Final = 30.0
TARGET_RSS_MB: Final = 150.0
TARGET_P99_RATIO: Final = 1.5


@dataclass(frozen=True)
class Plan:
    """How long each phase runs; every phase is also capped by a request count."""

    latency_s: float  # 1-client phases
    load_s: float  # 32-client phases
    warm_s: float
    max_requests: int
    relay_reps: int
    slow_streams: int


FULL: Final = Plan(latency_s=10.0, load_s=12.0, warm_s=1.5, max_requests=200_000, relay_reps=10, slow_streams=1000)
QUICK: Final = Plan(latency_s=1.5, load_s=2.5, warm_s=0.5, max_requests=50_000, relay_reps=3, slow_streams=1000)


@dataclass(frozen=True)
class Measured:
    sample: Sample
    cpu_s: float  # CPU the metered process spent during the measured part (0 when unmetered)


def _log(message: str) -> None:
    # Progress goes to stderr so stdout holds only the table.
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def _closed_loop(port: int, raw: bytes, clients: int, seconds: float, plan: Plan, pid: int | None) -> Measured:
    pool = await Pool.open(port, clients)
    try:
        await pool.warm(raw, per_client=200 if clients == 1 else 20, max_seconds=plan.warm_s)
        cpu_before = cpu_seconds(pid) if pid else 0.0
        sample = await pool.run(raw, seconds, plan.max_requests)
        cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    finally:
        pool.close()
    return Measured(_checked(sample, port), cpu)


def _checked(sample: Sample, port: int) -> Sample:
    """Stop the benchmark when nothing succeeded: a table of n/a would hide the cause."""
    if not sample.count:
        raise RuntimeError(f"every request to port {port} failed ({sample.errors} errors)")
    return sample


def _errors(scenario: str, direct: Sample, minato: Sample) -> list[Row]:
    """An errors row only when something failed: a clean run would only add noise."""
    if not (direct.errors or minato.errors):
        return []
    return [Row(scenario, "errors", minato.errors, "count", direct.errors, "0", minato.errors == 0)]


async def answer_rows(
    standin_port: int, minato: Minato, plan: Plan, *, stream: bool, clients: int, label_suffix: str = ""
) -> list[Row]:
    """Requests/s, p50, p99 (and TTFT for streams), and Minato's CPU per request."""
    kind = "streamed" if stream else "non-streamed"
    scenario = f"{kind} (20 tok), {clients} client{'s' if clients > 1 else ''}{label_suffix}"
    seconds = plan.latency_s if clients == 1 else plan.load_s
    route = f"/stream/{SHORT_MODEL}" if stream else f"/{SHORT_MODEL}"
    _log(f"{scenario}: direct")
    direct = await _closed_loop(
        standin_port, chat_request(standin_port, SHORT_MODEL, stream=stream), clients, seconds, plan, None
    )
    _log(f"{scenario}: through Minato")
    through = await _closed_loop(
        minato.port, get_request(minato.port, f"{route}?message=hi"), clients, seconds, plan, minato.pid
    )
    d, m = direct.sample, through.sample
    d_tot, m_tot = d.totals(), m.totals()
    d50, m50 = percentile(d_tot, 0.5) * MS, percentile(m_tot, 0.5) * MS
    first_figure = clients == 1 and not stream and not label_suffix
    rows = [
        Row(scenario, "requests/s", m.rate, "req/s", d.rate),
        Row(
            scenario,
            "p50 latency",
            m50,
            "ms",
            d50,
            target=f"≤ {TARGET_ADDED_MS:g} ms added" if first_figure else "",
            passed=(m50 - d50 <= TARGET_ADDED_MS) if first_figure else None,
        ),
        Row(scenario, "p99 latency", percentile(m_tot, 0.99) * MS, "ms", percentile(d_tot, 0.99) * MS),
    ]
    if stream:
        d_ttft, m_ttft = percentile(d.ttfbs(), 0.5) * MS, percentile(m.ttfbs(), 0.5) * MS
        ttft_target = clients == 1
        rows.append(
            Row(
                scenario,
                "TTFT p50",
                m_ttft,
                "ms",
                d_ttft,
                target=f"≤ {TARGET_ADDED_MS:g} ms added" if ttft_target else "",
                passed=(m_ttft - d_ttft <= TARGET_ADDED_MS) if ttft_target else None,
            )
        )
    if clients > 1 and m.count:
        rows.append(Row(scenario, "Minato CPU per request", through.cpu_s / m.count * MS, "ms"))
    return rows + _errors(scenario, d, m)


async def _repeat(port: int, raw: bytes, reps: int, pid: int | None) -> Measured:
    """One connection, one long stream at a time, ``reps`` times after one warm-up stream."""
    pool = await Pool.open(port, 1)
    try:
        await pool.warm(raw, per_client=1, max_seconds=30)
        cpu_before = cpu_seconds(pid) if pid else 0.0
        sample = await pool.run(raw, seconds=60, max_requests=reps)
        cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    finally:
        pool.close()
    return Measured(_checked(sample, port), cpu)


async def relay_rows(standin_port: int, minato: Minato, plan: Plan) -> list[Row]:
    """Tokens/s of one 5,000-token stream, and Minato's CPU per relayed token."""
    scenario = f"relay one {LONG_TOKENS:,}-token stream"
    _log(f"{scenario}: direct")
    direct = await _repeat(standin_port, chat_request(standin_port, LONG_MODEL, stream=True), plan.relay_reps, None)
    _log(f"{scenario}: through Minato")
    raw = get_request(minato.port, f"/stream/{LONG_MODEL}?message=hi")
    through = await _repeat(minato.port, raw, plan.relay_reps, minato.pid)
    d, m = direct.sample, through.sample

    def tokens_per_s(sample: Sample) -> float:
        return LONG_TOKENS / statistics.median(sample.totals()) if sample.count else math.nan

    cpu_per_token = through.cpu_s / (m.count * LONG_TOKENS) * 1e6 if m.count else math.nan
    return [
        Row(scenario, "tokens/s", tokens_per_s(m), "tok/s", tokens_per_s(d)),
        Row(
            scenario,
            "Minato CPU per token",
            cpu_per_token,
            "µs",
            target=f"≤ {TARGET_CPU_US_PER_TOKEN:g} µs",
            passed=cpu_per_token <= TARGET_CPU_US_PER_TOKEN,
        ),
        *_errors(scenario, d, m),
    ]


@contextlib.asynccontextmanager
async def _peak_rss(pid: int) -> AsyncIterator[list[int]]:
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


async def slow_stream_rows(standin_port: int, minato: Minato, plan: Plan) -> list[Row]:
    """1,000 paced streams at once: all complete, how late the slowest are, Minato's memory."""
    n = plan.slow_streams
    scenario = f"{n:,} slow streams (20 tok, 50 ms apart)"
    _log(f"{scenario}: direct")
    d = await burst(standin_port, chat_request(standin_port, SLOW_MODEL, stream=True), n, SLOW_TIMEOUT_S)
    _log(f"{scenario}: through Minato")
    rss_before = rss_bytes(minato.pid)
    cpu_before = cpu_seconds(minato.pid)
    async with _peak_rss(minato.pid) as peak:
        m = await burst(minato.port, get_request(minato.port, f"/stream/{SLOW_MODEL}?message=hi"), n, SLOW_TIMEOUT_S)
    # Paced tokens arrive one per read, so unlike the long relay nothing is batched: this is
    # the per-token cost a real model's pace produces (stream set-up included).
    cpu_per_token = (cpu_seconds(minato.pid) - cpu_before) / (m.count * SLOW_TOKENS) * 1e6 if m.count else math.nan
    d_tot, m_tot = d.totals(), m.totals()
    d99, m99 = percentile(d_tot, 0.99), percentile(m_tot, 0.99)
    peak_mb = peak[0] / MB
    return [
        Row(scenario, "errors", m.errors, "count", d.errors, "0", m.errors == 0),
        Row(scenario, "p50 completion", percentile(m_tot, 0.5), "s", percentile(d_tot, 0.5)),
        Row(
            scenario,
            "p99 completion",
            m99,
            "s",
            d99,
            target=f"≤ {TARGET_P99_RATIO:g}x direct",
            passed=m99 <= TARGET_P99_RATIO * d99,
        ),
        Row(scenario, "p99 / ideal 1.0 s", m99 / SLOW_IDEAL_S, "ratio", d99 / SLOW_IDEAL_S),
        Row(scenario, "Minato CPU per token", cpu_per_token, "µs"),
        Row(scenario, "Minato RSS before", rss_before / MB, "MB"),
        Row(
            scenario,
            "Minato peak RSS",
            peak_mb,
            "MB",
            target=f"≤ {TARGET_RSS_MB:g} MB",
            passed=peak_mb <= TARGET_RSS_MB,
        ),
    ]
