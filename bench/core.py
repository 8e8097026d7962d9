"""The core part: one Minato, one backend: 1 and 32 clients, the long relay, the front doors."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import httptools

from bench.common import (
    LONG_MODEL,
    LONG_TOKENS,
    MS,
    NATIVE_CHAT,
    NO_V1,
    OPENAI_CHAT,
    RELAY_ROUNDS,
    SHORT_MODEL,
    TARGET_ADDED_MS,
    TARGET_CPU_US_PER_TOKEN,
    TARGET_DOOR_CPU_RATIO,
    Measured,
    Plan,
    checked,
    closed_loop,
    errors_row,
    log,
    unmeasured,
)
from bench.load import (
    REQUEST_TIMEOUT_S,
    Pool,
    Sample,
    chat_request,
    connect,
    get_request,
    percentile,
)
from bench.processes import Server, cpu_seconds
from bench.report import Row, Unit

__all__ = ["answer_rows", "door_rows", "relay_rows", "speaks_v1"]


async def answer_rows(
    standin_port: int, minato: Server, plan: Plan, *, stream: bool, clients: int, label_suffix: str = ""
) -> list[Row]:
    """Requests/s, p50, p99 (and TTFT for streams), and Minato's CPU per request."""
    kind = "streamed" if stream else "non-streamed"
    scenario = f"{kind} (20 tok), {clients} client{'s' if clients > 1 else ''}{label_suffix}"
    seconds = plan.latency_s if clients == 1 else plan.load_s
    route = f"/stream/{SHORT_MODEL}" if stream else f"/{SHORT_MODEL}"
    log(f"{scenario}: direct")
    direct = await closed_loop(
        standin_port, chat_request(standin_port, SHORT_MODEL, stream=stream), clients, seconds, plan, None
    )
    log(f"{scenario}: through Minato")
    through = await closed_loop(
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
    return rows + errors_row(scenario, direct.sample, through.sample)


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
    return [Measured(checked(sample, port), spent) for sample, spent in zip(samples, cpu, strict=True)]


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


async def speaks_v1(standin_port: int) -> bool:
    # Until the stand-in speaks OpenAI (it answered 501 there), its rows say so instead of failing the run.
    return await _answers(standin_port, chat_request(standin_port, SHORT_MODEL, stream=True, path=OPENAI_CHAT))


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
        return unmeasured(scenario, metrics, NO_V1)
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
        *errors_row(scenario, relayed.direct, relayed.through.sample),
    ]


async def relay_rows(standin_port: int, minato: Server, plan: Plan) -> list[Row]:
    """Tokens/s of one 5,000-token stream and Minato's CPU per relayed token: own route, then each door.

    The own route (``GET /stream/{model}``) and the doors' ``POST /api/chat`` and
    ``POST /v1/chat/completions`` take turns on the same Minato, and each door's CPU per token is
    divided by the own route's. The own route's and the native door's direct baseline is the same
    request, the stand-in's streamed ``POST /api/chat``.
    """
    scenario = f"relay one {LONG_TOKENS:,}-token stream"
    paths = [NATIVE_CHAT, OPENAI_CHAT] if await speaks_v1(standin_port) else [NATIVE_CHAT]
    log(f"{scenario}: direct, {', '.join(paths)}")
    direct_raws = [chat_request(standin_port, LONG_MODEL, stream=True, path=path) for path in paths]
    direct = await _repeat(standin_port, direct_raws, plan.relay_reps, None)
    log(f"{scenario}: through Minato, GET /stream and {', '.join(paths)}")
    raws = [
        get_request(minato.port, f"/stream/{LONG_MODEL}?message=hi"),
        *(chat_request(minato.port, LONG_MODEL, stream=True, path=path) for path in paths),
    ]
    own, *doors = await _repeat(minato.port, raws, plan.relay_reps, minato.pid)
    relayed = {path: Relayed(d.sample, m) for path, d, m in zip(paths, direct, doors, strict=True)}
    own_relay = Relayed(direct[0].sample, own)
    rows = [*own_relay.rows(scenario, TARGET_CPU_US_PER_TOKEN), *errors_row(scenario, direct[0].sample, own.sample)]
    for path in (NATIVE_CHAT, OPENAI_CHAT):
        rows += _door_relay_rows(path, relayed.get(path), own_relay)
    return rows


async def _door_answer_rows(standin_port: int, minato: Server, plan: Plan, *, path: str, stream: bool) -> list[Row]:
    kind = "streamed" if stream else "whole"
    scenario = f"{_DOOR_NAMES[path]} POST {path}, {kind} (20 tok), 1 client"
    if path == OPENAI_CHAT and not await speaks_v1(standin_port):
        metrics: list[tuple[str, Unit]] = [("requests/s", "req/s"), ("p50 latency", "ms"), ("p99 latency", "ms")]
        return unmeasured(scenario, metrics + ([("TTFT p50", "ms")] if stream else []), NO_V1)
    log(f"{scenario}: direct")
    direct_raw = chat_request(standin_port, SHORT_MODEL, stream=stream, path=path)
    direct = await closed_loop(standin_port, direct_raw, 1, plan.latency_s, plan, None)
    log(f"{scenario}: through Minato")
    raw = chat_request(minato.port, SHORT_MODEL, stream=stream, path=path)
    through = await closed_loop(minato.port, raw, 1, plan.latency_s, plan, minato.pid)
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
    return rows + errors_row(scenario, direct.sample, through.sample)


async def door_rows(standin_port: int, minato: Server, plan: Plan) -> list[Row]:
    """The front doors' answers: native ``/api/chat`` whole and streamed, OpenAI's ``/v1/chat/completions`` streamed.

    Each is compared with the same request sent to the stand-in's route of the same name.
    """
    rows: list[Row] = []
    for path, stream in ((NATIVE_CHAT, False), (NATIVE_CHAT, True), (OPENAI_CHAT, True)):
        rows += await _door_answer_rows(standin_port, minato, plan, path=path, stream=stream)
    return rows
