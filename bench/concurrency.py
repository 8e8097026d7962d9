"""The concurrency part: 1,000 slow streams, then 5,000 at once, on one Minato worker."""

from __future__ import annotations

import contextlib
import math
import resource
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import urlsplit

from bench.common import (
    MB,
    TARGET_P99_RATIO,
    TARGET_RSS_MB,
    Plan,
    log,
    peak_rss,
    settle,
    standin_process,
    unmeasured,
)
from bench.load import (
    Result,
    burst,
    chat_request,
    get_request,
    percentile,
)
from bench.processes import Server, cpu_seconds, rss_bytes, run_minato
from bench.profile import Profiler
from bench.report import Row, Unit
from tests.support.standin.process import StandInProcess

__all__ = ["MANY", "SLOW", "Burst", "concurrency_rows", "concurrency_settings", "peak_streaming"]


def peak_streaming(results: Sequence[Result]) -> int:
    """Most streams at once between their first token and their end (as the client saw them)."""
    events = sorted([(r.first_body, 1) for r in results] + [(r.finished, -1) for r in results])
    peak = open_ = 0
    for _, step in events:  # at equal times an end sorts before a start: no overlap is invented
        open_ += step
        peak = max(peak, open_)
    return peak


@dataclass(frozen=True)
class Burst:
    """``count`` streams of ``tokens`` tokens, ``gap_s`` apart, asked for at once or over ``ramp_s``."""

    count: int
    tokens: int
    gap_s: float
    rss_target_mb: float
    timeout_s: float
    ramp_s: float = 0.0

    @property
    def model(self) -> str:
        return f"standin/paced:{self.tokens}x{self.gap_s * 1000:.0f}"

    @property
    def ideal_s(self) -> float:
        """The stand-in's own pace: the first token at once, then one per gap."""
        return (self.tokens - 1) * self.gap_s

    @property
    def scenario(self) -> str:
        ramp = f", started over {self.ramp_s:g} s" if self.ramp_s else ""
        return f"{self.count:,} slow streams ({self.tokens} tok, {self.gap_s * 1000:.0f} ms apart{ramp})"


SLOW: Final = Burst(count=1000, tokens=20, gap_s=0.050, rss_target_mb=TARGET_RSS_MB, timeout_s=30.0)
# Started over 10 s (500 a second), not at one moment: 5,000 requests at once would have Minato
# open 5,000 connections to the stand-in at once, beyond its listen backlog (see _settle). Each
# lasts 15 s, so all 5,000 are relaying together from the 10th second to the 15th if Minato sets
# them up as fast as they arrive; a token every 3 s keeps this a test of holding streams (memory,
# descriptors, caps) more than of relaying tokens, which the paced rows measure.
MANY: Final = Burst(count=5000, tokens=6, gap_s=3.0, rss_target_mb=TARGET_RSS_MB, timeout_s=60.0, ramp_s=10.0)
RESERVED_FDS: Final = 64  # Minato's own reserve (minato.server.httpserver.RESERVED_FILES)


def concurrency_settings(streams: int) -> dict[str, str]:
    """What a Minato must be told to admit ``streams`` at once on one worker (see docs/benchmarks.md).

    Client connections are capped at half the open-file limit (automatic): the benchmark raises
    that limit to the hard one, and checks it is enough, rather than setting the cap.
    """
    return {"MINATO_MAX_GENERATIONS": str(streams), "MINATO_MAX_CONNECTIONS": str(streams)}


async def _burst_rows(standin: StandInProcess, minato: Server, burst_: Burst, *, concurrency_held: bool) -> list[Row]:
    """All streams at once: errors, completion (p50, p99) against direct, CPU per token, Minato's memory."""
    scenario = burst_.scenario
    standin_port = urlsplit(standin.url).port
    assert standin_port is not None
    log(f"{scenario}: direct")
    direct_raw = chat_request(standin_port, burst_.model, stream=True)
    d = await burst(standin_port, direct_raw, burst_.count, burst_.timeout_s, burst_.ramp_s)
    await settle(standin.pid)
    log(f"{scenario}: through Minato")
    rss_before = rss_bytes(minato.pid)
    cpu_before = cpu_seconds(minato.pid)
    raw = get_request(minato.port, f"/stream/{burst_.model}?message=hi")
    async with peak_rss(minato.pid) as peak:
        m = await burst(minato.port, raw, burst_.count, burst_.timeout_s, burst_.ramp_s)
    # Paced tokens arrive one per read, so unlike the long relay nothing is batched: this is
    # the per-token cost a real model's pace produces (stream set-up included).
    cpu_s = cpu_seconds(minato.pid) - cpu_before
    cpu_per_token = cpu_s / (m.count * burst_.tokens) * 1e6 if m.count else math.nan
    d_tot, m_tot = d.totals(), m.totals()
    d99, m99 = percentile(d_tot, 0.99), percentile(m_tot, 0.99)
    peak_mb = peak[0] / MB
    rows = [
        Row(scenario, "errors", m.errors, "count", d.errors, "0", m.errors == 0),
        Row(scenario, "p50 completion", percentile(m_tot, 0.5), "s", percentile(d_tot, 0.5)),
        Row(
            scenario,
            "p99 completion",
            m99,
            "s",
            d99,
            target="" if concurrency_held else f"≤ {TARGET_P99_RATIO:g}x direct",
            passed=None if concurrency_held else m99 <= TARGET_P99_RATIO * d99,
        ),
        Row(scenario, f"p99 / ideal {burst_.ideal_s:g} s", m99 / burst_.ideal_s, "ratio", d99 / burst_.ideal_s),
    ]
    if concurrency_held:
        # Whether the streams really ran at once: a burst slower to set up than a stream lasts is not one.
        peak_open, direct_open = peak_streaming(m.results), peak_streaming(d.results)
        rows.append(
            Row(
                scenario,
                "streams relaying at once (peak)",
                peak_open,
                "count",
                direct_open,
                target=f"all {burst_.count:,}",
                passed=peak_open == burst_.count,
            )
        )
    return [
        *rows,
        Row(scenario, "Minato CPU per token", cpu_per_token, "µs"),
        Row(scenario, "Minato RSS before", rss_before / MB, "MB"),
        Row(
            scenario,
            "Minato peak RSS",
            peak_mb,
            "MB",
            target=f"≤ {burst_.rss_target_mb:g} MB",
            passed=peak_mb <= burst_.rss_target_mb,
        ),
    ]


def _fds_needed(streams: int) -> int:
    """Descriptors Minato needs for ``streams`` at once: two sockets each (client, Ollama) and its reserve."""
    return 2 * streams + RESERVED_FDS + 16  # 16: the listening socket, the store, logs, and the like


async def concurrency_rows(plan: Plan, profiler: Profiler | None) -> list[Row]:
    """1,000 slow streams (p99 against direct), then 5,000 at once (errors, RSS) on one Minato worker.

    They have their own stand-in, so no other row meets one that has just closed thousands of
    connections. Each burst has a Minato of its own, started for it: the 5,000 streams' RSS is that of
    a fresh process, not of one the 1,000 streams left grown. Each Minato is told to admit them all
    (:func:`concurrency_settings`); the open-file limit, raised to the hard one before any process
    started, must hold two sockets per stream.
    """
    many = replace(MANY, count=plan.many_streams)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.ExitStack() as stack:
        standin = standin_process(stack)
        with run_minato(standin.url, "warning", concurrency_settings(SLOW.count)) as minato:
            rows = await _burst_rows(standin, minato, SLOW, concurrency_held=False)
        if soft < _fds_needed(many.count):
            why = f"open-file limit {soft:,}, {_fds_needed(many.count):,} needed: raise ulimit -n"
            metrics: list[tuple[str, Unit]] = [("errors", "count"), ("Minato peak RSS", "MB")]
            return rows + unmeasured(many.scenario, metrics, why)
        await settle(standin.pid)
        minato = stack.enter_context(run_minato(standin.url, "warning", concurrency_settings(many.count)))
        rows += await _burst_rows(standin, minato, many, concurrency_held=True)
        if profiler is not None:
            await settle(standin.pid)
            log(f"{many.scenario}: profiling Minato")
            raw = get_request(minato.port, f"/stream/{many.model}?message=hi")
            async with profiler.record(f"{many.scenario}: Minato GET /stream", minato.pid) as run:
                part = await burst(minato.port, raw, many.count, many.timeout_s, many.ramp_s)
            run.units, run.unit = part.count, "stream"
        return rows
