"""The per-feature part: what each of Minato's features costs per whole answer, in CPU µs.

A/B runs for what a setting or the request turns on: Minatos that differ by one feature each take
turns of 16-client closed-loop ``GET /{model}?message=hi`` (rotating order), and a feature's cost is
the median over the rounds of its Minato's CPU per request minus its reference's (the same round, so
the same machine load). A second baseline Minato, the control, shows what two processes of one
configuration differ by on this machine. What has no off switch (the metrics; fair admission, the
generation queue every request passes) is read from a py-spy profile of the baseline's load: the
share of samples with that code on the stack, times the CPU per request. These are notes: no verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.common import (
    AUTH,
    BENCH_KEY,
    HIGH_RATE,
    SHORT_MODEL,
    TURNS_PER_SESSION,
    Plan,
    log,
    median_of_pairs,
    standin_process,
)
from bench.load import REQUEST_TIMEOUT_S, Connection, Pool, Sample, get_request
from bench.processes import Server, cpu_seconds, run_minato
from bench.profile import Profiler
from bench.report import Row

__all__ = ["feature_rows"]

CLIENTS: Final = 16
PARALLEL: Final = {"MINATO_BACKEND_PARALLEL": str(2 * CLIENTS)}  # every request on the loaded backend
#: Where a profile finds the features that cannot be turned off (a sample counts once per feature).
PROFILED: Final = {
    "metrics (prometheus-client)": ("minato/observability/metrics.py", "prometheus_client/"),
    "fair admission (the generation queue)": ("minato/core/admission.py",),
}


@dataclass(frozen=True)
class Variant:
    """One Minato configuration (or request) of the A/B runs, and the one its cost is taken over."""

    name: str
    over: str  # the variant it differs from by this feature ("" for the baseline)
    level: str = "warning"
    settings: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] | None = None
    backends: int = 1
    session: bool = False  # the baseline's Minato, each request a conversation turn


KEY: Final = {"MINATO_API_KEYS": BENCH_KEY}
VARIANTS: Final = (
    Variant("baseline", ""),
    Variant("control: a second baseline", "baseline"),
    Variant("key", "baseline", settings=KEY, headers=AUTH),
    Variant("rate limit", "key", settings={**KEY, "MINATO_RATE_LIMIT_PER_MINUTE": str(HIGH_RATE)}, headers=AUTH),
    Variant("log line (MINATO_LOG_LEVEL=info)", "baseline", level="info"),
    Variant(f"session turn ({TURNS_PER_SESSION}-turn sessions)", "baseline", session=True),
    Variant("routing with 3 backends", "baseline", backends=3),
)


async def _session_leg(port: int, conns: list[Connection], seconds: float, round_: int, plan: Plan) -> Sample:
    """Each connection takes conversation turns in sessions of its own, :data:`TURNS_PER_SESSION` each."""
    sample = Sample()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    budget = plan.max_requests

    async def client(index: int, conn: Connection) -> None:
        nonlocal budget
        turn = 0
        while budget > 0 and loop.time() < deadline:
            budget -= 1
            session = f"f{round_}-{index}-{turn // TURNS_PER_SESSION}"
            raw = get_request(port, f"/{SHORT_MODEL}?message=hi&session={session}")
            turn += 1
            try:
                result = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
            except (ConnectionError, TimeoutError):
                sample.errors += 1
                return
            if result.status == 200:
                sample.results.append(result)
            else:
                sample.errors += 1

    started = loop.time()
    await asyncio.gather(*(client(index, conn) for index, conn in enumerate(conns)))
    sample.elapsed = loop.time() - started
    return sample


async def _measured(server: Server, variant: Variant, round_: int, plan: Plan) -> tuple[float, int]:
    """One turn on connections of its own (idle ones would outlive the server's keep-alive timeout while
    the other variants take theirs): Minato's CPU µs per request, and the errors."""
    pool = await Pool.open(server.port, CLIENTS)
    try:
        cpu_before = cpu_seconds(server.pid)
        if variant.session:
            sample = await _session_leg(server.port, pool.connections, plan.feature_leg_s, round_, plan)
        else:
            raw = get_request(server.port, f"/{SHORT_MODEL}?message=hi", variant.headers)
            sample = await pool.run(raw, plan.feature_leg_s, plan.max_requests)
        spent = cpu_seconds(server.pid) - cpu_before
    finally:
        pool.close()
    return (spent / sample.count * 1e6 if sample.count else float("nan")), sample.errors


@dataclass
class _Leg:
    variant: Variant
    server: Server
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0


async def _profiled(baseline: Server, plan: Plan) -> list[Row]:
    """The features without an off switch, from a py-spy profile of the baseline's load."""
    scenario = f"per-feature cost: whole answer (20 tok), {CLIENTS} clients, from a profile"
    with tempfile.TemporaryDirectory(prefix="minato-bench-features-") as tmp:
        profiler = Profiler(Path(tmp) / "profile.txt")
        pool = await Pool.open(baseline.port, CLIENTS)
        try:
            async with profiler.record("baseline", baseline.pid) as run:
                raw = get_request(baseline.port, f"/{SHORT_MODEL}?message=hi")
                run.units = (await pool.run(raw, plan.profile_s, plan.max_requests)).count
        finally:
            pool.close()
    total = sum(run.stacks.values())
    if run.error or not total or not run.units:
        why = run.error or "no samples"
        return [Row(scenario, name, float("nan"), "µs", missing=why[:80]) for name in PROFILED]
    per_request_us = run.cpu_s / run.units * 1e6
    rows = []
    for name, places in PROFILED.items():
        hits = sum(count for stack, count in run.stacks.items() if any(p in frame for frame in stack for p in places))
        rows.append(Row(scenario, f"{name}, µs per request", hits / total * per_request_us, "µs"))
    return [*rows, Row(scenario, "baseline CPU per request (py-spy's pauses included)", per_request_us, "µs")]


async def feature_rows(plan: Plan) -> list[Row]:
    """Each feature's CPU µs per whole answer: A/B runs, then a profile for what cannot be turned off."""
    scenario = f"per-feature cost: whole answer (20 tok), {CLIENTS} clients, A/B (Minato CPU per request)"
    with contextlib.ExitStack() as stack:
        loaded = standin_process(stack, "--models", SHORT_MODEL, "--loaded", SHORT_MODEL)
        spares = ",".join(standin_process(stack, "--models", SHORT_MODEL).url for _ in range(2))
        servers: dict[str, Server] = {}
        legs: list[_Leg] = []
        for variant in VARIANTS:
            if not variant.session:
                url = loaded.url if variant.backends == 1 else f"{loaded.url},{spares}"
                settings = {**PARALLEL, **variant.settings}
                servers[variant.name] = stack.enter_context(run_minato(url, variant.level, settings))
            legs.append(_Leg(variant, servers["baseline"] if variant.session else servers[variant.name]))
        for leg in legs:  # first-call costs outside the measured turns
            await _measured(leg.server, leg.variant, -1, plan)
        for round_ in range(plan.feature_rounds):
            shift = round_ % len(legs)
            log(f"{scenario}: round {round_ + 1} of {plan.feature_rounds}")
            for leg in legs[shift:] + legs[:shift]:
                cpu_us, errors = await _measured(leg.server, leg.variant, round_, plan)
                leg.cpu_us.append(cpu_us)
                leg.errors += errors
        log("per-feature cost: profiling the baseline")
        profiled = await _profiled(servers["baseline"], plan)
    return [*_ab_rows(scenario, legs), *profiled]


def _ab_rows(scenario: str, legs: list[_Leg]) -> list[Row]:
    by_name = {leg.variant.name: leg for leg in legs}
    rows = [Row(scenario, "baseline: CPU per request", statistics.median(by_name["baseline"].cpu_us), "µs")]
    for leg in legs[1:]:
        reference = by_name[leg.variant.over]
        added = median_of_pairs(reference.cpu_us, leg.cpu_us)
        rows.append(Row(scenario, f"{leg.variant.name}: µs per request over {leg.variant.over}", added, "µs"))
    errors = sum(leg.errors for leg in legs)
    if errors:
        rows.append(Row(scenario, "errors", errors, "count", target="0", passed=False))
    return rows
