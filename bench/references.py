"""The references: paced tokens through nginx, the floor relay, the bare relay and Minato; whole answers
at 16 clients against the floor and the bare relay."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from bench.common import (
    AUTH,
    DEFAULT_FEATURES,
    MB,
    MS,
    NATIVE_CHAT,
    OPENAI_CHAT,
    REQUEST_LINE,
    SHORT_MODEL,
    TURNS_PER_SESSION,
    Plan,
    Tally,
    checked,
    closed_loop,
    log,
    peak_rss,
)
from bench.concurrency import Burst
from bench.load import (
    Pool,
    Sample,
    burst,
    chat_request,
    get_request,
    percentile,
)
from bench.pool import conversation_turns
from bench.processes import NGINX, Server, cpu_seconds, run_bare_relay, run_floor_relay, run_minato, run_nginx
from bench.profile import Profiler
from bench.report import Row

__all__ = ["paced_rows", "whole16_rows"]


PACED: Final = Burst(count=200, tokens=100, gap_s=0.020, rss_target_mb=math.inf, timeout_s=60.0)
TARGET_NGINX_RATIO: Final = 1.2
TARGET_PACED_P99_RATIO: Final = 1.1
NGINX_LABEL: Final = "nginx POST /api/chat"


@dataclass(frozen=True)
class Subject:
    """One server and route taking part in a comparison; ``pid`` ``None`` is the stand-in itself."""

    label: str
    port: int
    pid: int | None
    route: str  # "stream" (GET /stream/{model}), "chat" (POST /api/chat) or "v1" (POST /v1/chat/completions)
    minato: bool = False

    def request(self, model: str) -> bytes:
        headers = AUTH if self.minato else None  # Minato with its default features wants its key
        if self.route == "stream":
            return get_request(self.port, f"/stream/{model}?message=hi", headers)
        path = OPENAI_CHAT if self.route == "v1" else NATIVE_CHAT
        raw = chat_request(self.port, model, stream=True, path=path)
        if headers is None:
            return raw
        head, _, body = raw.partition(b"\r\n\r\n")
        return head + b"".join(f"\r\n{name}: {value}".encode() for name, value in headers.items()) + b"\r\n\r\n" + body


async def _paced_round(subject: Subject, tally: Tally) -> None:
    if subject.pid is None:
        tally.add(await burst(subject.port, subject.request(PACED.model), PACED.count, PACED.timeout_s), 0.0)
        return
    cpu_before = cpu_seconds(subject.pid)
    async with peak_rss(subject.pid) as peak:
        part = await burst(subject.port, subject.request(PACED.model), PACED.count, PACED.timeout_s)
    tally.add(part, cpu_seconds(subject.pid) - cpu_before)
    tally.peak_rss = max(tally.peak_rss, peak[0])


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
                target=f"≤ {TARGET_PACED_P99_RATIO:g}x direct" if subject.minato else "",
                passed=m99 <= TARGET_PACED_P99_RATIO * d99 if subject.minato else None,
            )
        )
    # One process serves both routes of a relay: its peak is shown once, under its first route.
    seen: set[int] = set()
    for subject in measured:
        if subject.pid is not None and subject.pid not in seen:
            seen.add(subject.pid)
            peak_mb = max(tallies[s.label].peak_rss for s in measured if s.pid == subject.pid) / MB
            rows.append(Row(scenario, f"{subject.label.rsplit(' ', 2)[0]}: peak RSS", peak_mb, "MB"))
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
    """200 streams of 100 tokens paced 20 ms apart, direct and through nginx, the floor relay, the bare
    relay and Minato (its default features on: info log, metrics, a key, a rate limit).

    Each server's CPU (all its processes) per relayed token and its peak RSS; Minato's three stream
    routes against nginx's, and their p99 completion against direct. The subjects take turns, in
    rotating order, :attr:`Plan.paced_rounds` times; each turn is one burst of all 200 streams.
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
            log(f"{scenario}: no nginx at {NGINX}; its rows read n/a")
        floor = stack.enter_context(run_floor_relay(standin_url))
        relay = stack.enter_context(run_bare_relay(standin_url))
        minato = stack.enter_context(run_minato(standin_url, "info", DEFAULT_FEATURES))
        subjects += [
            Subject("floor relay GET /stream", floor.port, floor.pid, "stream"),
            Subject("floor relay POST /api/chat", floor.port, floor.pid, "chat"),
            Subject("bare relay GET /stream", relay.port, relay.pid, "stream"),
            Subject("bare relay POST /api/chat", relay.port, relay.pid, "chat"),
            Subject("Minato GET /stream", minato.port, minato.pid, "stream", minato=True),
            Subject("Minato POST /api/chat", minato.port, minato.pid, "chat", minato=True),
            Subject("Minato POST /v1/chat/completions", minato.port, minato.pid, "v1", minato=True),
        ]
        for subject in subjects:  # first-call costs (imports, pools) outside the measured turns
            checked(await burst(subject.port, subject.request(SHORT_MODEL), 20, PACED.timeout_s), subject.port)
        tallies = {subject.label: Tally() for subject in subjects}
        for round_ in range(plan.paced_rounds):
            shift = round_ % len(subjects)
            for subject in subjects[shift:] + subjects[:shift]:
                log(f"{scenario}: round {round_ + 1} of {plan.paced_rounds}, {subject.label}")
                await _paced_round(subject, tallies[subject.label])
        if profiler is not None:
            for subject in subjects:
                if subject.minato:
                    log(f"{scenario}: profiling {subject.label}")
                    async with profiler.record(f"{scenario}: {subject.label}", minato.pid) as run:
                        part = await burst(subject.port, subject.request(PACED.model), PACED.count, PACED.timeout_s)
                    run.units, run.unit = part.count * PACED.tokens, "token"
    rows = _paced_table(scenario, subjects, tallies)
    if not any(s.label == NGINX_LABEL for s in subjects):
        rows.insert(0, Row(scenario, f"{NGINX_LABEL}: CPU per relayed token", math.nan, "µs", missing=f"no {NGINX}"))
    return rows


WHOLE_CLIENTS: Final = 16
TARGET_FLOOR_RATIO: Final = 0.8
TARGET_BARE_RATIO: Final = 1.0


async def whole16_rows(standin_url: str, plan: Plan, profiler: Profiler | None) -> list[Row]:
    """Whole answers at 16 clients: Minato with its default features on against the floor and the bare relay.

    Minato logs at info (one request line each), keeps its metrics, requires a key (sent by the
    load generator) and checks a rate limit set too high to refuse anything. The three take
    :attr:`Plan.whole_rounds` turns of :attr:`Plan.whole_leg_s` each, in rotating order.
    """
    standin_port = urlsplit(standin_url).port
    assert standin_port is not None
    scenario = f"whole answer (20 tok), {WHOLE_CLIENTS} clients: Minato's default features vs the floor and bare relays"
    log(f"{scenario}: direct")
    direct_raw = chat_request(standin_port, SHORT_MODEL, stream=False)
    direct = await closed_loop(standin_port, direct_raw, WHOLE_CLIENTS, 2 * plan.whole_leg_s, plan, None)
    with contextlib.ExitStack() as stack:
        minato = stack.enter_context(run_minato(standin_url, "info", DEFAULT_FEATURES))
        floor = stack.enter_context(run_floor_relay(standin_url))
        relay = stack.enter_context(run_bare_relay(standin_url))
        target = f"/{SHORT_MODEL}?message=hi"
        legs = {
            "Minato": (minato, get_request(minato.port, target, AUTH)),
            "floor relay": (floor, get_request(floor.port, target)),
            "bare relay": (relay, get_request(relay.port, target)),
        }
        tallies = {name: Tally() for name in legs}
        names = list(legs)
        for server, raw in legs.values():
            await _leg(server, raw, plan, plan.warm_s, Tally())  # first-call costs outside the measured turns
        lines_before = len(REQUEST_LINE.findall(minato.log_path.read_bytes()))
        for round_ in range(plan.whole_rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                server, raw = legs[name]
                log(f"{scenario}: round {round_ + 1} of {plan.whole_rounds}, {name}")
                await _leg(server, raw, plan, plan.whole_leg_s, tallies[name])
        log_lines = len(REQUEST_LINE.findall(minato.log_path.read_bytes())) - lines_before
        if profiler is not None:
            await _profile_whole(profiler, plan, scenario, legs)
    return _whole16_table(scenario, tallies, direct.sample, log_lines)


async def _leg(server: Server, raw: bytes, plan: Plan, seconds: float, tally: Tally) -> None:
    """One turn on connections of its own: idle ones would outlive the server's keep-alive timeout (5 s)
    while the others take their turns. They are open before the CPU count starts."""
    pool = await Pool.open(server.port, WHOLE_CLIENTS)
    try:
        cpu_before = cpu_seconds(server.pid)
        part = await pool.run(raw, seconds, plan.max_requests)
        tally.add(checked(part, server.port), cpu_seconds(server.pid) - cpu_before)
    finally:
        pool.close()


async def _profile_whole(profiler: Profiler, plan: Plan, scenario: str, legs: dict[str, tuple[Server, bytes]]) -> None:
    for name, (server, raw) in legs.items():
        log(f"{scenario}: profiling {name}")
        # New connections: the measured ones may have outlived uvicorn's keep-alive timeout.
        profiled = await Pool.open(server.port, WHOLE_CLIENTS)
        try:
            async with profiler.record(f"{scenario}: {name} GET /{{model}}", server.pid) as run:
                run.units = (await profiled.run(raw, plan.profile_s, plan.max_requests)).count
        finally:
            profiled.close()
    log(f"{scenario}: profiling Minato, conversation turns")
    minato = legs["Minato"][0]
    turns = f"conversation turn (20 tok, {TURNS_PER_SESSION}-turn sessions), 1 client"
    async with profiler.record(f"{turns}, Minato's default features", minato.pid) as run:
        run.units = (await conversation_turns(minato, "profile", plan.profile_s, plan.max_requests, AUTH)).count


def _whole16_table(scenario: str, tallies: dict[str, Tally], direct: Sample, log_lines: int) -> list[Row]:
    m, f, b = tallies["Minato"], tallies["floor relay"], tallies["bare relay"]
    d_rate, d_p50 = direct.rate, percentile(direct.totals(), 0.5) * MS
    rows = [Row(scenario, f"{name} requests/s", t.sample.rate, "req/s", d_rate) for name, t in tallies.items()]
    for name, reference, least in (("floor relay", f, TARGET_FLOOR_RATIO), ("bare relay", b, TARGET_BARE_RATIO)):
        ratio = m.sample.rate / reference.sample.rate
        rows.append(
            Row(scenario, f"Minato / {name} requests/s", ratio, "ratio", target=f"≥ {least:g}x", passed=ratio >= least)
        )
    rows += [
        Row(scenario, f"{name} CPU per request", t.cpu_s / t.sample.count * 1e6, "µs") for name, t in tallies.items()
    ]
    rows += [
        Row(scenario, f"{name} p50 latency", percentile(t.sample.totals(), 0.5) * MS, "ms", d_p50)
        for name, t in tallies.items()
    ]
    # Proof that the request log was on: one line per answer (0 would mean the level was not info).
    rows.append(Row(scenario, "Minato request log lines per request", log_lines / m.sample.count, "ratio"))
    errors = sum(t.sample.errors for t in tallies.values())
    if errors:
        rows.append(Row(scenario, "errors (Minato + relays)", errors, "count", target="0", passed=False))
    return rows
