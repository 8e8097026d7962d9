"""The measurements: each scenario runs against the stand-in directly, then through Minato.

Direct first, Minato right after, on the same stand-in process: the baseline shares the run's
machine state, and its figure sits next to Minato's in the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httptools
import redis as redis_client

from bench.load import (
    REQUEST_TIMEOUT_S,
    Connection,
    Pool,
    Result,
    Sample,
    burst,
    chat_request,
    connect,
    get_request,
    percentile,
)
from bench.processes import NGINX, Server, cpu_seconds, rss_bytes, run_bare_relay, run_minato, run_nginx
from bench.profile import Profiler
from bench.report import Row, Unit
from tests.support.redis_server import RedisServer, RedisServerMissingError
from tests.support.standin.process import StandInProcess

__all__ = [
    "Plan",
    "answer_rows",
    "concurrency_rows",
    "door_rows",
    "paced_rows",
    "pool_rows",
    "relay_rows",
    "whole16_rows",
]

SHORT_MODEL: Final = "standin/tokens:20"
LONG_TOKENS: Final = 5000
LONG_MODEL: Final = f"standin/tokens:{LONG_TOKENS}"
RSS_POLL_S: Final = 0.02
RELAY_ROUNDS: Final = 5  # turns the long relays take (see _repeat)
MB: Final = 1024 * 1024
MS: Final = 1000.0

TARGET_ADDED_MS: Final = 0.5  # first byte of a stream, p50 of a whole answer, at 1 client (own routes and native door)
TARGET_CPU_US_PER_TOKEN: Final = 20.0
TARGET_RSS_MB: Final = 150.0
TARGET_P99_RATIO: Final = 1.5
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
    profile_s: float  # each profiled run of a closed-loop load (--profile)


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
)


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
    standin_port: int, minato: Server, plan: Plan, *, stream: bool, clients: int, label_suffix: str = ""
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
    first_figure = clients == 1 and not stream and not label_suffix
    rows = _latency_rows(
        scenario,
        direct.sample,
        through.sample,
        stream=stream,
        p50_target_ms=TARGET_ADDED_MS if first_figure else None,
        ttft_target_ms=TARGET_ADDED_MS if clients == 1 else None,
    )
    if clients > 1 and through.sample.count:
        rows.append(Row(scenario, "Minato CPU per request", through.cpu_s / through.sample.count * MS, "ms"))
    return rows + _errors(scenario, direct.sample, through.sample)


def _added(scenario: str, metric: str, minato_ms: float, direct_ms: float, target_ms: float | None) -> Row:
    """A latency row, held to ``target_ms`` of time added over direct when there is one."""
    if target_ms is None:
        return Row(scenario, metric, minato_ms, "ms", direct_ms)
    return Row(
        scenario,
        metric,
        minato_ms,
        "ms",
        direct_ms,
        target=f"≤ {target_ms:g} ms added",
        passed=minato_ms - direct_ms <= target_ms,
    )


def _latency_rows(
    scenario: str,
    d: Sample,
    m: Sample,
    *,
    stream: bool,
    p50_target_ms: float | None = None,
    ttft_target_ms: float | None = None,
) -> list[Row]:
    """Requests/s, p50 and p99 (and TTFT p50 for a stream), Minato next to direct."""
    d_tot, m_tot = d.totals(), m.totals()
    rows = [
        Row(scenario, "requests/s", m.rate, "req/s", d.rate),
        _added(scenario, "p50 latency", percentile(m_tot, 0.5) * MS, percentile(d_tot, 0.5) * MS, p50_target_ms),
        Row(scenario, "p99 latency", percentile(m_tot, 0.99) * MS, "ms", percentile(d_tot, 0.99) * MS),
    ]
    if stream:
        m_ttft, d_ttft = percentile(m.ttfbs(), 0.5) * MS, percentile(d.ttfbs(), 0.5) * MS
        rows.append(_added(scenario, "TTFT p50", m_ttft, d_ttft, ttft_target_ms))
    return rows


async def _repeat(port: int, raws: Sequence[bytes], reps: int, pid: int | None) -> list[Measured]:
    """Each of ``raws`` on its own connection, one long stream at a time, ``reps`` times each.

    The requests take turns in :data:`RELAY_ROUNDS` rounds, so a machine whose load drifts during
    the run (other processes on the shared cores) weighs on each of them alike: their CPU figures
    are compared with each other.
    """
    pools = [await Pool.open(port, 1) for _ in raws]
    samples = [Sample() for _ in raws]
    cpu = [0.0 for _ in raws]
    try:
        for pool, raw in zip(pools, raws, strict=True):
            await pool.warm(raw, per_client=1, max_seconds=30)
        for _ in range(RELAY_ROUNDS):
            for index, (pool, raw) in enumerate(zip(pools, raws, strict=True)):
                cpu_before = cpu_seconds(pid) if pid else 0.0
                part = await pool.run(raw, seconds=60, max_requests=math.ceil(reps / RELAY_ROUNDS))
                cpu[index] += cpu_seconds(pid) - cpu_before if pid else 0.0
                samples[index].results += part.results
                samples[index].errors += part.errors
                samples[index].elapsed += part.elapsed
    finally:
        for pool in pools:
            pool.close()
    return [Measured(_checked(sample, port), spent) for sample, spent in zip(samples, cpu, strict=True)]


@dataclass(frozen=True)
class Relayed:
    """One long stream relayed ``reps`` times, direct and through Minato."""

    direct: Sample
    through: Measured

    @staticmethod
    def _tokens_per_s(sample: Sample) -> float:
        return LONG_TOKENS / statistics.median(sample.totals()) if sample.count else math.nan

    @property
    def cpu_us_per_token(self) -> float:
        count = self.through.sample.count
        return self.through.cpu_s / (count * LONG_TOKENS) * 1e6 if count else math.nan

    def rows(self, scenario: str, cpu_target_us: float | None = None) -> list[Row]:
        cpu = self.cpu_us_per_token
        return [
            Row(
                scenario,
                "tokens/s",
                self._tokens_per_s(self.through.sample),
                "tok/s",
                self._tokens_per_s(self.direct),
            ),
            Row(
                scenario,
                "Minato CPU per token",
                cpu,
                "µs",
                target=f"≤ {cpu_target_us:g} µs" if cpu_target_us is not None else "",
                passed=cpu <= cpu_target_us if cpu_target_us is not None else None,
            ),
        ]


async def _answers(port: int, raw: bytes) -> bool:
    """Whether ``port`` answers ``raw`` with 200 (the stand-in may not speak a door's dialect yet)."""
    conn = await connect(port)
    try:
        result = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
    except (ConnectionError, TimeoutError, httptools.HttpParserError):
        return False
    finally:
        conn.close()
    return result.status == 200


async def _speaks_v1(standin_port: int) -> bool:
    # Until the stand-in speaks OpenAI (it answered 501 there), its rows say so instead of failing the run.
    return await _answers(standin_port, chat_request(standin_port, SHORT_MODEL, stream=True, path=OPENAI_CHAT))


def _unmeasured(scenario: str, metrics: list[tuple[str, Unit]], why: str) -> list[Row]:
    return [Row(scenario, metric, math.nan, unit, math.nan, missing=why) for metric, unit in metrics]


_DOOR_NAMES: Final = {NATIVE_CHAT: "native", OPENAI_CHAT: "OpenAI"}
_RATIO_METRIC: Final = "CPU per token / GET /stream's"


def _door_relay_rows(path: str, relayed: Relayed | None, own: Relayed) -> list[Row]:
    scenario = f"{_DOOR_NAMES[path]} POST {path}: relay one {LONG_TOKENS:,}-token stream"
    if relayed is None:
        metrics: list[tuple[str, Unit]] = [
            ("tokens/s", "tok/s"),
            ("Minato CPU per token", "µs"),
            (_RATIO_METRIC, "ratio"),
        ]
        return _unmeasured(scenario, metrics, NO_V1)
    ratio = relayed.cpu_us_per_token / own.cpu_us_per_token
    held = path == NATIVE_CHAT  # the budget is the native door's; OpenAI's is shown for comparison
    return [
        *relayed.rows(scenario),
        Row(
            scenario,
            _RATIO_METRIC,
            ratio,
            "ratio",
            target=f"≤ {TARGET_DOOR_CPU_RATIO:.1f}x" if held else "",
            passed=ratio <= TARGET_DOOR_CPU_RATIO if held else None,
        ),
        *_errors(scenario, relayed.direct, relayed.through.sample),
    ]


async def relay_rows(standin_port: int, minato: Server, plan: Plan) -> list[Row]:
    """Tokens/s of one 5,000-token stream and Minato's CPU per relayed token: own route, then each door.

    The own route (``GET /stream/{model}``) and the doors' ``POST /api/chat`` and
    ``POST /v1/chat/completions`` take turns on the same Minato, and each door's CPU per token is
    divided by the own route's. The own route's and the native door's direct baseline is the same
    request, the stand-in's streamed ``POST /api/chat``.
    """
    scenario = f"relay one {LONG_TOKENS:,}-token stream"
    paths = [NATIVE_CHAT, OPENAI_CHAT] if await _speaks_v1(standin_port) else [NATIVE_CHAT]
    _log(f"{scenario}: direct, {', '.join(paths)}")
    direct_raws = [chat_request(standin_port, LONG_MODEL, stream=True, path=path) for path in paths]
    direct = await _repeat(standin_port, direct_raws, plan.relay_reps, None)
    _log(f"{scenario}: through Minato, GET /stream and {', '.join(paths)}")
    raws = [
        get_request(minato.port, f"/stream/{LONG_MODEL}?message=hi"),
        *(chat_request(minato.port, LONG_MODEL, stream=True, path=path) for path in paths),
    ]
    own, *doors = await _repeat(minato.port, raws, plan.relay_reps, minato.pid)
    relayed = {path: Relayed(d.sample, m) for path, d, m in zip(paths, direct, doors, strict=True)}
    own_relay = Relayed(direct[0].sample, own)
    rows = [*own_relay.rows(scenario, TARGET_CPU_US_PER_TOKEN), *_errors(scenario, direct[0].sample, own.sample)]
    for path in (NATIVE_CHAT, OPENAI_CHAT):
        rows += _door_relay_rows(path, relayed.get(path), own_relay)
    return rows


async def _door_answer_rows(standin_port: int, minato: Server, plan: Plan, *, path: str, stream: bool) -> list[Row]:
    kind = "streamed" if stream else "whole"
    scenario = f"{_DOOR_NAMES[path]} POST {path}, {kind} (20 tok), 1 client"
    if path == OPENAI_CHAT and not await _speaks_v1(standin_port):
        metrics: list[tuple[str, Unit]] = [("requests/s", "req/s"), ("p50 latency", "ms"), ("p99 latency", "ms")]
        return _unmeasured(scenario, metrics + ([("TTFT p50", "ms")] if stream else []), NO_V1)
    _log(f"{scenario}: direct")
    direct_raw = chat_request(standin_port, SHORT_MODEL, stream=stream, path=path)
    direct = await _closed_loop(standin_port, direct_raw, 1, plan.latency_s, plan, None)
    _log(f"{scenario}: through Minato")
    raw = chat_request(minato.port, SHORT_MODEL, stream=stream, path=path)
    through = await _closed_loop(minato.port, raw, 1, plan.latency_s, plan, minato.pid)
    # The native door is held to the own routes' budgets: p50 of a whole answer, first byte of a stream.
    native = path == NATIVE_CHAT
    rows = _latency_rows(
        scenario,
        direct.sample,
        through.sample,
        stream=stream,
        p50_target_ms=TARGET_ADDED_MS if native and not stream else None,
        ttft_target_ms=TARGET_ADDED_MS if native and stream else None,
    )
    return rows + _errors(scenario, direct.sample, through.sample)


async def door_rows(standin_port: int, minato: Server, plan: Plan) -> list[Row]:
    """The front doors' answers: native ``/api/chat`` whole and streamed, OpenAI's ``/v1/chat/completions`` streamed.

    Each is compared with the same request sent to the stand-in's route of the same name.
    """
    rows: list[Row] = []
    for path, stream in ((NATIVE_CHAT, False), (NATIVE_CHAT, True), (OPENAI_CHAT, True)):
        rows += await _door_answer_rows(standin_port, minato, plan, path=path, stream=stream)
    return rows


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


def _peak_streaming(results: Sequence[Result]) -> int:
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
MANY: Final = Burst(count=5000, tokens=6, gap_s=3.0, rss_target_mb=250.0, timeout_s=60.0, ramp_s=10.0)
RESERVED_FDS: Final = 64  # Minato's own reserve (minato.server.httpserver.RESERVED_FILES)
SETTLE_STEP_S: Final = 0.25
SETTLE_IDLE: Final = 0.05  # of one core
SETTLE_MAX_S: Final = 15.0


def concurrency_settings(streams: int) -> dict[str, str]:
    """What a Minato must be told to admit ``streams`` at once on one worker (see docs/benchmarks.md).

    Client connections are capped at half the open-file limit (automatic): the benchmark raises
    that limit to the hard one, and checks it is enough, rather than setting the cap.
    """
    return {"MINATO_MAX_GENERATIONS": str(streams), "MINATO_MAX_CONNECTIONS": str(streams)}


async def _settle(pid: int) -> None:
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


async def _burst_rows(standin: StandInProcess, minato: Server, burst_: Burst, *, concurrency_held: bool) -> list[Row]:
    """All streams at once: errors, completion (p50, p99) against direct, CPU per token, Minato's memory."""
    scenario = burst_.scenario
    standin_port = urlsplit(standin.url).port
    assert standin_port is not None
    _log(f"{scenario}: direct")
    direct_raw = chat_request(standin_port, burst_.model, stream=True)
    d = await burst(standin_port, direct_raw, burst_.count, burst_.timeout_s, burst_.ramp_s)
    await _settle(standin.pid)
    _log(f"{scenario}: through Minato")
    rss_before = rss_bytes(minato.pid)
    cpu_before = cpu_seconds(minato.pid)
    raw = get_request(minato.port, f"/stream/{burst_.model}?message=hi")
    async with _peak_rss(minato.pid) as peak:
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
        peak_open, direct_open = _peak_streaming(m.results), _peak_streaming(d.results)
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
    connections. The Minato is told to admit them all (:func:`concurrency_settings`); the open-file
    limit, raised to the hard one before any process started, must hold two sockets per stream.
    """
    many = replace(MANY, count=plan.many_streams)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.ExitStack() as stack:
        standin = _standin(stack)
        minato = stack.enter_context(run_minato(standin.url, "warning", concurrency_settings(many.count)))
        rows = await _burst_rows(standin, minato, SLOW, concurrency_held=False)
        if soft < _fds_needed(many.count):
            why = f"open-file limit {soft:,}, {_fds_needed(many.count):,} needed: raise ulimit -n"
            metrics: list[tuple[str, Unit]] = [("errors", "count"), ("Minato peak RSS", "MB")]
            return rows + _unmeasured(many.scenario, metrics, why)
        await _settle(standin.pid)
        rows += await _burst_rows(standin, minato, many, concurrency_held=True)
        if profiler is not None:
            await _settle(standin.pid)
            _log(f"{many.scenario}: profiling Minato")
            raw = get_request(minato.port, f"/stream/{many.model}?message=hi")
            async with profiler.record(f"{many.scenario}: Minato GET /stream", minato.pid) as run:
                part = await burst(minato.port, raw, many.count, many.timeout_s, many.ramp_s)
            run.units, run.unit = part.count, "stream"
        return rows


# -- the references: nginx and the bare relay (issue #13) --------------------------------------------

PACED: Final = Burst(count=200, tokens=100, gap_s=0.020, rss_target_mb=math.inf, timeout_s=60.0)
TARGET_NGINX_RATIO: Final = 1.5
NGINX_LABEL: Final = "nginx POST /api/chat"
BARE_STREAM: Final = "bare relay GET /stream"


@dataclass(frozen=True)
class Subject:
    """One server and route taking part in a comparison; ``server`` ``None`` is the stand-in itself."""

    label: str
    port: int
    pid: int | None
    route: str  # "stream" (GET /stream/{model}) or "chat" (POST /api/chat)
    minato: bool = False

    def request(self, model: str) -> bytes:
        if self.route == "stream":
            return get_request(self.port, f"/stream/{model}?message=hi")
        return chat_request(self.port, model, stream=True)


@dataclass
class Tally:
    """What the rounds of one subject added up to."""

    sample: Sample = field(default_factory=Sample)
    cpu_s: float = 0.0

    def add(self, part: Sample, cpu_s: float) -> None:
        self.sample.results += part.results
        self.sample.errors += part.errors
        self.sample.elapsed += part.elapsed
        self.cpu_s += cpu_s


async def _paced_round(subject: Subject, tally: Tally) -> None:
    cpu_before = cpu_seconds(subject.pid) if subject.pid else 0.0
    part = await burst(subject.port, subject.request(PACED.model), PACED.count, PACED.timeout_s)
    tally.add(part, cpu_seconds(subject.pid) - cpu_before if subject.pid else 0.0)


def _paced_table(scenario: str, subjects: list[Subject], tallies: dict[str, Tally]) -> list[Row]:
    def per_token(label: str) -> float:
        tally = tallies.get(label)
        count = tally.sample.count if tally else 0
        return tally.cpu_s / (count * PACED.tokens) * 1e6 if tally and count else math.nan

    measured = [s for s in subjects if s.pid is not None]
    rows = [Row(scenario, f"{s.label}: CPU per relayed token", per_token(s.label), "µs") for s in measured]
    nginx = per_token(NGINX_LABEL)
    for subject in measured:
        if subject.label == NGINX_LABEL:
            continue
        ratio = per_token(subject.label) / nginx
        rows.append(
            Row(
                scenario,
                f"{subject.label}: CPU per token / nginx's",
                ratio,
                "ratio",
                target=f"≤ {TARGET_NGINX_RATIO:g}x" if subject.minato else "",
                passed=ratio <= TARGET_NGINX_RATIO if subject.minato and not math.isnan(ratio) else None,
            )
        )
    d99 = percentile(tallies["direct"].sample.totals(), 0.99)
    for subject in measured:
        m99 = percentile(tallies[subject.label].sample.totals(), 0.99)
        rows.append(
            Row(
                scenario,
                f"{subject.label}: p99 completion",
                m99,
                "s",
                d99,
                target=f"≤ {TARGET_P99_RATIO:g}x direct" if subject.minato else "",
                passed=m99 <= TARGET_P99_RATIO * d99 if subject.minato else None,
            )
        )
    for subject in subjects:
        errors = tallies[subject.label].sample.errors
        if subject.minato or errors:  # the references' errors only when there are some
            rows.append(
                Row(
                    scenario,
                    f"{subject.label}: errors",
                    errors,
                    "count",
                    target="0" if subject.minato else "",
                    passed=errors == 0 if subject.minato else None,
                )
            )
    return rows


async def paced_rows(standin_url: str, plan: Plan, profiler: Profiler | None) -> list[Row]:
    """200 streams of 100 tokens paced 20 ms apart, direct and through nginx, the bare relay and Minato.

    Each server's CPU (all its processes) per relayed token; Minato's two stream routes against
    nginx's, and their p99 completion against direct. The subjects take turns, in rotating order,
    :attr:`Plan.paced_rounds` times; each turn is one burst of all 200 streams.
    """
    standin_port = urlsplit(standin_url).port
    assert standin_port is not None
    scenario = (
        f"paced tokens: {PACED.count} streams x {PACED.tokens} tokens, {PACED.gap_s * 1000:.0f} ms apart"
        f" (ideal {PACED.ideal_s:g} s)"
    )
    with contextlib.ExitStack() as stack:
        subjects = [Subject("direct", standin_port, None, "chat")]
        try:
            nginx = stack.enter_context(run_nginx(standin_port))
            subjects.append(Subject(NGINX_LABEL, nginx.port, nginx.pid, "chat"))
        except FileNotFoundError:
            _log(f"{scenario}: no nginx at {NGINX}; its rows read n/a")
        relay = stack.enter_context(run_bare_relay(standin_url))
        minato = stack.enter_context(run_minato(standin_url, "warning"))
        subjects += [
            Subject(BARE_STREAM, relay.port, relay.pid, "stream"),
            Subject("bare relay POST /api/chat", relay.port, relay.pid, "chat"),
            Subject("Minato GET /stream", minato.port, minato.pid, "stream", minato=True),
            Subject("Minato POST /api/chat", minato.port, minato.pid, "chat", minato=True),
        ]
        for subject in subjects:  # first-call costs (imports, pools) outside the measured turns
            _checked(await burst(subject.port, subject.request(SHORT_MODEL), 20, PACED.timeout_s), subject.port)
        tallies = {subject.label: Tally() for subject in subjects}
        for round_ in range(plan.paced_rounds):
            shift = round_ % len(subjects)
            for subject in subjects[shift:] + subjects[:shift]:
                _log(f"{scenario}: round {round_ + 1} of {plan.paced_rounds}, {subject.label}")
                await _paced_round(subject, tallies[subject.label])
        if profiler is not None:
            for subject in subjects:
                if subject.minato:
                    _log(f"{scenario}: profiling {subject.label}")
                    async with profiler.record(f"{scenario}: {subject.label}", minato.pid) as run:
                        part = await burst(subject.port, subject.request(PACED.model), PACED.count, PACED.timeout_s)
                    run.units, run.unit = part.count * PACED.tokens, "token"
    rows = _paced_table(scenario, subjects, tallies)
    if not any(s.label == NGINX_LABEL for s in subjects):
        rows.insert(0, Row(scenario, f"{NGINX_LABEL}: CPU per relayed token", math.nan, "µs", missing=f"no {NGINX}"))
    return rows


WHOLE_CLIENTS: Final = 16
BENCH_KEY: Final = "minato-bench-key"  # a user key of the benchmark's own Minato, on loopback only
HIGH_RATE: Final = 1_000_000_000  # per minute: the limit is checked on every request and never reached
TARGET_BARE_RATIO: Final = 0.9
DEFAULT_FEATURES: Final = {"MINATO_API_KEYS": BENCH_KEY, "MINATO_RATE_LIMIT_PER_MINUTE": str(HIGH_RATE)}
AUTH: Final = {"Authorization": f"Bearer {BENCH_KEY}"}
_REQUEST_LINE: Final = re.compile(rb'"event": ?"request"')


async def whole16_rows(standin_url: str, plan: Plan, profiler: Profiler | None) -> list[Row]:
    """Whole answers at 16 clients: Minato with its default features on against the bare relay.

    Minato logs at info (one request line each), keeps its metrics, requires a key (sent by the
    load generator) and checks a rate limit set too high to refuse anything. The two take
    :attr:`Plan.whole_rounds` turns of :attr:`Plan.whole_leg_s` each, alternating which goes first.
    """
    standin_port = urlsplit(standin_url).port
    assert standin_port is not None
    scenario = f"whole answer (20 tok), {WHOLE_CLIENTS} clients: Minato's default features vs the bare relay"
    _log(f"{scenario}: direct")
    direct_raw = chat_request(standin_port, SHORT_MODEL, stream=False)
    direct = await _closed_loop(standin_port, direct_raw, WHOLE_CLIENTS, 2 * plan.whole_leg_s, plan, None)
    with contextlib.ExitStack() as stack:
        minato = stack.enter_context(run_minato(standin_url, "info", DEFAULT_FEATURES))
        relay = stack.enter_context(run_bare_relay(standin_url))
        target = f"/{SHORT_MODEL}?message=hi"
        legs = {
            "Minato": (minato, get_request(minato.port, target, AUTH)),
            "bare relay": (relay, get_request(relay.port, target)),
        }
        pools = {name: await Pool.open(server.port, WHOLE_CLIENTS) for name, (server, _) in legs.items()}
        tallies = {name: Tally() for name in legs}
        try:
            for name, (_, raw) in legs.items():
                await pools[name].warm(raw, per_client=20, max_seconds=plan.warm_s)
            lines_before = len(_REQUEST_LINE.findall(minato.log_path.read_bytes()))
            for round_ in range(plan.whole_rounds):
                for name in list(legs) if round_ % 2 == 0 else list(legs)[::-1]:
                    server, raw = legs[name]
                    _log(f"{scenario}: round {round_ + 1} of {plan.whole_rounds}, {name}")
                    cpu_before = cpu_seconds(server.pid)
                    part = await pools[name].run(raw, plan.whole_leg_s, plan.max_requests)
                    tallies[name].add(_checked(part, server.port), cpu_seconds(server.pid) - cpu_before)
            log_lines = len(_REQUEST_LINE.findall(minato.log_path.read_bytes())) - lines_before
            if profiler is not None:
                for name, (server, raw) in legs.items():
                    _log(f"{scenario}: profiling {name}")
                    # New connections: the measured ones may have outlived uvicorn's keep-alive timeout.
                    profiled = await Pool.open(server.port, WHOLE_CLIENTS)
                    try:
                        async with profiler.record(f"{scenario}: {name} GET /{{model}}", server.pid) as run:
                            run.units = (await profiled.run(raw, plan.profile_s, plan.max_requests)).count
                    finally:
                        profiled.close()
                _log(f"{scenario}: profiling Minato, conversation turns")
                turns = f"conversation turn (20 tok, {TURNS_PER_SESSION}-turn sessions), 1 client"
                async with profiler.record(f"{turns}, Minato's default features", minato.pid) as run:
                    run.units = (await _turns(minato, "profile", plan.profile_s, plan.max_requests, AUTH)).count
        finally:
            for pool in pools.values():
                pool.close()
    m, b = tallies["Minato"], tallies["bare relay"]
    ratio = m.sample.rate / b.sample.rate
    d_rate, d_p50 = direct.sample.rate, percentile(direct.sample.totals(), 0.5) * MS
    rows = [
        Row(scenario, "Minato requests/s", m.sample.rate, "req/s", d_rate),
        Row(scenario, "bare relay requests/s", b.sample.rate, "req/s", d_rate),
        Row(
            scenario,
            "Minato / bare relay requests/s",
            ratio,
            "ratio",
            target=f"≥ {TARGET_BARE_RATIO:g}x",
            passed=ratio >= TARGET_BARE_RATIO,
        ),
        Row(scenario, "Minato CPU per request", m.cpu_s / m.sample.count * 1e6, "µs"),
        Row(scenario, "bare relay CPU per request", b.cpu_s / b.sample.count * 1e6, "µs"),
        Row(scenario, "Minato p50 latency", percentile(m.sample.totals(), 0.5) * MS, "ms", d_p50),
        Row(scenario, "bare relay p50 latency", percentile(b.sample.totals(), 0.5) * MS, "ms", d_p50),
        # Proof that the request log was on: one line per answer (0 would mean the level was not info).
        Row(scenario, "Minato request log lines per request", log_lines / m.sample.count, "ratio"),
    ]
    errors = m.sample.errors + b.sample.errors
    if errors:
        rows.append(Row(scenario, "errors (Minato + bare relay)", errors, "count", target="0", passed=False))
    return rows


# -- the pool and shared state (issue #12) ------------------------------------------------------------


def _standin(stack: contextlib.ExitStack, *args: str) -> StandInProcess:
    standin = StandInProcess(*args)
    stack.callback(standin.stop)  # stop() after kill() is a no-op
    return standin


def _backend(standin: StandInProcess) -> str:
    """How Minato names a backend (``host:port``)."""
    return urlsplit(standin.url).netloc


async def pool_rows(standin_url: str, plan: Plan) -> list[Row]:
    """The pool's and the shared state's rows; each starts its own stand-ins, Minatos (and Redis)."""
    rows = await routing_rows(plan)
    rows += await failover_rows(plan)
    return rows + await redis_turn_rows(standin_url, plan)


def _median_of_pairs(a: list[float], b: list[float]) -> float:
    """The median of ``b - a`` taken round by round (both met the same machine in each round)."""
    return statistics.median(y - x for x, y in zip(a, b, strict=True))


async def _cpu_per_request(minato: Server, pool: Pool, raw: bytes, seconds: float, plan: Plan) -> tuple[float, int]:
    """One measured leg on connections already open and warm: Minato's CPU µs per request, and errors."""
    cpu_before = cpu_seconds(minato.pid)
    sample = _checked(await pool.run(raw, seconds, plan.max_requests), minato.port)
    return (cpu_seconds(minato.pid) - cpu_before) / sample.count * 1e6, sample.errors


async def routing_rows(plan: Plan) -> list[Row]:
    """Minato's CPU per whole answer in front of one backend, and of three where routing must choose.

    The model is installed on all three and loaded on one; ``MINATO_BACKEND_PARALLEL`` above the
    client count keeps every request on that one, so every Minato sends the same traffic to the same
    stand-in and the difference is the routing (and the probes of two more backends). A second
    one-backend Minato is the control: two processes of the same configuration differ by this much
    on this machine. The three take short turns, in rotating order, and each difference is the
    median of the rounds' differences.
    """
    scenario = f"pool routing: whole answer (20 tok), {POOL_CLIENTS} clients, 3 backends vs 1"
    settings = {"MINATO_BACKEND_PARALLEL": str(2 * POOL_CLIENTS)}
    with contextlib.ExitStack() as stack:
        loaded = _standin(stack, "--models", SHORT_MODEL, "--loaded", SHORT_MODEL)
        spares = [_standin(stack, "--models", SHORT_MODEL) for _ in range(2)]
        one = stack.enter_context(run_minato(loaded.url, "warning", settings))
        pool_url = ",".join([loaded.url, *(spare.url for spare in spares)])
        three = stack.enter_context(run_minato(pool_url, "warning", settings))
        control = stack.enter_context(run_minato(loaded.url, "warning", settings))
        minatos = [one, three, control]
        names = {one.pid: "1 backend", three.pid: "3 backends", control.pid: "1 backend (control)"}
        legs = {
            minato.pid: (
                await Pool.open(minato.port, POOL_CLIENTS),
                get_request(minato.port, f"/{SHORT_MODEL}?message=hi"),
            )
            for minato in minatos
        }
        cpu_us: dict[int, list[float]] = {minato.pid: [] for minato in minatos}
        errors = 0
        try:
            for pool, raw in legs.values():
                await pool.warm(raw, per_client=20, max_seconds=plan.warm_s)
            for round_ in range(plan.pool_rounds):
                shift = round_ % len(minatos)
                for minato in minatos[shift:] + minatos[:shift]:
                    pool, raw = legs[minato.pid]
                    cpu, failed = await _cpu_per_request(minato, pool, raw, plan.pool_leg_s, plan)
                    cpu_us[minato.pid].append(cpu)
                    errors += failed
                _log(
                    f"{scenario}: round {round_ + 1} of {plan.pool_rounds}, µs per request: "
                    + ", ".join(f"{names[m.pid]} {cpu_us[m.pid][-1]:.0f}" for m in minatos)
                )
        finally:
            for pool, _ in legs.values():
                pool.close()
    added = _median_of_pairs(cpu_us[one.pid], cpu_us[three.pid])
    noise = _median_of_pairs(cpu_us[one.pid], cpu_us[control.pid])
    # When two processes of one configuration already differ by more than the budget, this run
    # cannot tell whether the pool kept to it: no verdict rather than one the noise made.
    resolved = abs(noise) <= TARGET_ROUTING_CPU_US
    target = f"≤ {TARGET_ROUTING_CPU_US:g} µs" + ("" if resolved else " (control above it: unresolved)")
    rows = [
        Row(scenario, "Minato CPU per request, 1 backend", statistics.median(cpu_us[one.pid]), "µs"),
        Row(scenario, "Minato CPU per request, 3 backends", statistics.median(cpu_us[three.pid]), "µs"),
        Row(
            scenario,
            "added CPU per request, 3 backends over 1",
            added,
            "µs",
            target=target,
            passed=added <= TARGET_ROUTING_CPU_US if resolved else None,
        ),
        Row(scenario, "control: a second 1-backend Minato over the first", noise, "µs"),
    ]
    if errors:  # an errors row only when something failed, as for the other scenarios
        rows.append(Row(scenario, "errors", errors, "count", target="0", passed=False))
    return rows


async def _get_body(conn: Connection, port: int, target: str) -> tuple[int, bytes]:
    """``GET target`` on a connection that keeps bodies: the status and the body."""
    assert conn.body is not None
    result = await asyncio.wait_for(conn.request(get_request(port, target)), REQUEST_TIMEOUT_S)
    return result.status, bytes(conn.body)


def _gauge(metrics: bytes, name: str, backend: str) -> float | None:
    """The value of ``name{backend="..."}`` in a Prometheus text page (``None`` when absent)."""
    prefix = f'{name}{{backend="{backend}"}} '.encode()
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (``/proc/<pid>/stat`` says zombie, or is no more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


@dataclass(frozen=True)
class Failover:
    """One run of sequential requests with one of two backends killed in the middle."""

    failed: int
    p50_before_s: float
    slowest_after_s: float
    slowest_before_s: float  # in as long a window before the kill: what the machine's noise alone does
    down_after_s: float  # nan when it was never seen down
    exit_after_s: float  # until the kernel had ended the process (nan: not seen)
    ready_says_down: bool


async def _failover_once(plan: Plan, scenario: str) -> Failover:
    with contextlib.ExitStack() as stack:
        survivor = _standin(stack, "--models", SHORT_MODEL, "--loaded", SHORT_MODEL)
        victim = _standin(stack, "--models", SHORT_MODEL, "--loaded", SHORT_MODEL)
        settings = {"MINATO_OLLAMA_PROBE_INTERVAL": f"{PROBE_INTERVAL_S:g}"}
        minato = stack.enter_context(run_minato(f"{survivor.url},{victim.url}", "warning", settings))
        name = _backend(victim)
        raw = get_request(minato.port, f"/{SHORT_MODEL}?message=hi")
        pool = await Pool.open(minato.port, 1)
        watcher = await connect(minato.port, keep_body=True)
        killing = asyncio.Event()
        killed_at = [math.inf]

        async def kill_later() -> None:
            await asyncio.sleep(plan.failover_s)
            _log(f"{scenario}: SIGKILL to the stand-in at {name}")
            killed_at[0] = time.perf_counter()
            # The signal alone here: reaping the child (``kill()``, after the run) would stall this
            # loop, and with it the request stream being timed, for milliseconds.
            os.kill(victim.pid, signal.SIGKILL)
            killing.set()

        async def seen_down() -> float:
            """perf_counter when ``/metrics`` first shows the killed backend out of the pool (``nan``: never).

            It polls from the start, so the requests before the kill share Minato with it too.
            """
            while not killing.is_set() or time.perf_counter() < killed_at[0] + DOWN_WAIT_S:
                _, page = await _get_body(watcher, minato.port, "/metrics")
                if killing.is_set() and _gauge(page, "minato_backend_up", name) == 0:
                    return time.perf_counter()
                await asyncio.sleep(DOWN_POLL_S)
            return math.nan

        async def exited() -> float:
            """perf_counter when the killed stand-in is gone (a zombie, or reaped): its sockets are closed then."""
            await killing.wait()
            while time.perf_counter() < killed_at[0] + DOWN_WAIT_S:
                if _gone(victim.pid):
                    return time.perf_counter()
                await asyncio.sleep(EXIT_POLL_S)
            return math.nan

        try:
            await pool.warm(raw, per_client=200, max_seconds=plan.warm_s)
            _, page = await _get_body(watcher, minato.port, "/metrics")
            if _gauge(page, "minato_backend_up", name) != 1:
                raise RuntimeError(f"backend {name} is not up in Minato's /metrics before the kill")
            sample, _, down_at, exit_at = await asyncio.gather(
                pool.run(raw, 2 * plan.failover_s, plan.max_requests), kill_later(), seen_down(), exited()
            )
            status, body = await _get_body(watcher, minato.port, "/ready")
        finally:
            pool.close()
            watcher.close()
            victim.kill()
    states = {b["name"]: b["state"] for b in json.loads(body).get("backends", [])} if status in (200, 503) else {}
    kill = killed_at[0]
    before = sorted(r.total for r in sample.results if r.finished <= kill)
    after = [r.total for r in sample.results if r.finished > kill and r.started <= kill + FAILOVER_WINDOW_S]
    window = [r.total for r in sample.results if kill - FAILOVER_WINDOW_S <= r.started and r.finished <= kill]
    return Failover(
        failed=sample.errors,
        p50_before_s=percentile(before, 0.5),
        slowest_after_s=max(after, default=math.nan),
        slowest_before_s=max(window, default=math.nan),
        down_after_s=down_at - kill,
        exit_after_s=exit_at - kill,
        ready_says_down=states.get(name) in {"down", "cooling"},
    )


async def failover_rows(plan: Plan) -> list[Row]:
    """Sequential whole answers through two backends that both have the model loaded; one is killed.

    Failed requests; the slowest request in flight at the kill or started within
    :data:`FAILOVER_WINDOW_S` after it, over the p50 before; and how long until the pool has it down
    (``minato_backend_up`` 0 in ``/metrics``, polled every 10 ms: ``/ready`` would probe the
    backends itself when asked), checked against ``/ready`` at the end.
    """
    scenario = f"pool failover: 1 of 2 backends killed, 1 client, probe every {PROBE_INTERVAL_S:g} s"
    runs: list[Failover] = []
    for rep in range(plan.failover_reps):
        _log(f"{scenario}: run {rep + 1} of {plan.failover_reps}")
        runs.append(await _failover_once(plan, scenario))
    failed = sum(run.failed for run in runs)
    added_ms = statistics.median((run.slowest_after_s - run.p50_before_s) * MS for run in runs)
    noise_ms = statistics.median((run.slowest_before_s - run.p50_before_s) * MS for run in runs)
    window_ms = f"{FAILOVER_WINDOW_S * MS:g} ms"
    down_ms = statistics.median(run.down_after_s * MS for run in runs)
    exit_ms = statistics.median(run.exit_after_s * MS for run in runs)
    return [
        Row(scenario, "failed requests", failed, "count", target="0", passed=failed == 0),
        Row(scenario, "p50 before the kill", statistics.median(run.p50_before_s * MS for run in runs), "ms"),
        Row(scenario, f"slowest in the {window_ms} after the kill, over p50 before", added_ms, "ms"),
        Row(scenario, f"slowest in the {window_ms} before it, over p50 (noise)", noise_ms, "ms"),
        Row(scenario, "kill to the stand-in's exit (the kernel's part)", exit_ms, "ms"),
        Row(
            scenario,
            "kill to marked down (minato_backend_up 0)",
            down_ms,
            "ms",
            target="down in /ready",
            passed=all(run.ready_says_down for run in runs) and not math.isnan(down_ms),
        ),
    ]


async def _turns(
    minato: Server, prefix: str, seconds: float, max_turns: int, headers: dict[str, str] | None = None
) -> Sample:
    """Sequential conversation turns, :data:`TURNS_PER_SESSION` per session, sessions ``prefix-N``."""
    pool = await Pool.open(minato.port, 1)
    sample = Sample()
    deadline = time.perf_counter() + seconds
    try:
        session = 0
        while sample.count + sample.errors < max_turns and (left := deadline - time.perf_counter()) > 0:
            raw = get_request(minato.port, f"/{SHORT_MODEL}?message=hi&session={prefix}-{session}", headers)
            part = await pool.run(raw, left, TURNS_PER_SESSION)
            sample.results += part.results
            sample.errors += part.errors
            sample.elapsed += part.elapsed
            session += 1
    finally:
        pool.close()
    return sample


_EXCEPTION_LINE: Final = re.compile(r"\b\w*(?:Error|Exception): [^\n\\\"]+")


def _cause(exc: Exception, limit: int = 160) -> str:
    """What a start-up failure's log says went wrong: its last ``SomeError: message`` (in a traceback
    that may sit escaped inside a JSON log line), else the last line."""
    text = str(exc)
    found = _EXCEPTION_LINE.findall(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = found[-1] if found else (lines[-1] if lines else type(exc).__name__)
    return cause if len(cause) <= limit else cause[: limit - 1] + "…"


def _redis_keys(server: RedisServer) -> int:
    """How many keys the Redis server holds (database 0)."""
    with redis_client.Redis(host="127.0.0.1", port=server.port, socket_timeout=1) as client:
        return int(client.dbsize())


async def redis_turn_rows(standin_url: str, plan: Plan) -> list[Row]:
    """A conversation turn with ``MINATO_REDIS_URL`` against one with the default SQLite store.

    One client, whole answers, sessions of :data:`TURNS_PER_SESSION` turns; the two Minatos (one
    backend, the same stand-in) take turns, and the added p50 is the median of the rounds' differences.
    """
    scenario = f"conversation turn (20 tok, {TURNS_PER_SESSION}-turn sessions), 1 client, Redis vs SQLite"
    metrics: list[tuple[str, Unit]] = [
        ("p50 turn, SQLite", "ms"),
        ("p50 turn, Redis", "ms"),
        ("added p50, Redis over SQLite", "ms"),
    ]
    try:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="minato-bench-redis-")))
    except RedisServerMissingError:
        return _unmeasured(scenario, metrics, f"no {REDIS_SERVER} on this machine")
    with contextlib.ExitStack() as stack:
        stack.enter_context(server)
        stack.callback(shutil.rmtree, server.directory, ignore_errors=True)
        sqlite = stack.enter_context(run_minato(standin_url, "warning"))
        try:
            redis = stack.enter_context(run_minato(standin_url, "warning", {"MINATO_REDIS_URL": server.url}))
        except RuntimeError as exc:  # e.g. a Minato that has the setting but not yet the Redis state home
            return _unmeasured(scenario, metrics, f"Minato with MINATO_REDIS_URL did not start: {_cause(exc)}")
        p50_ms: dict[int, list[float]] = {sqlite.port: [], redis.port: []}
        errors = 0
        for minato in (sqlite, redis):
            _checked(await _turns(minato, "warm", plan.warm_s, 20 * TURNS_PER_SESSION), minato.port)
        if not _redis_keys(server):
            return _unmeasured(scenario, metrics, "MINATO_REDIS_URL not wired in this Minato: nothing reached Redis")
        for round_ in range(plan.turn_rounds):
            for minato in (sqlite, redis) if round_ % 2 == 0 else (redis, sqlite):
                _log(f"{scenario}: round {round_ + 1}, {'Redis' if minato is redis else 'SQLite'}")
                sample = _checked(await _turns(minato, f"r{round_}", plan.turn_leg_s, plan.max_requests), minato.port)
                p50_ms[minato.port].append(percentile(sample.totals(), 0.5) * MS)
                errors += sample.errors
    added = _median_of_pairs(p50_ms[sqlite.port], p50_ms[redis.port])
    rows = [
        Row(scenario, "p50 turn, SQLite", statistics.median(p50_ms[sqlite.port]), "ms"),
        Row(scenario, "p50 turn, Redis", statistics.median(p50_ms[redis.port]), "ms"),
        Row(scenario, "added p50, Redis over SQLite", added, "ms"),
    ]
    if errors:
        rows.append(Row(scenario, "errors", errors, "count", target="0", passed=False))
    return rows
