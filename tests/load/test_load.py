"""Hundreds of concurrent streams through Minato, two thirds of them abandoned part-way.

A third of the clients hang up after the first token, a third after a random number of tokens, a
third read to the end. Afterwards nothing may be left behind: no stream counted in flight, no request
still open on the stand-in, no sockets piling up in Minato, and Minato answers as before.

Every stream asks for ``standin/gated:20``, whose tokens the test releases: the gate first opens to
``HANG_UP_BY`` tokens, every abandoning client hangs up at its planned token, and only once the
stand-in has seen every one of those cancellations does the gate open to the end for the others. So a
hang-up happens at a known token every time, whatever the machine's load; nothing is paced by the
clock and nothing is timed. The test runs its own stand-in and its own Minato, so no other test's
leftovers reach its counts.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.load]

STREAMS: Final = 300
TOKENS: Final = 20
MODEL: Final = f"standin/gated:{TOKENS}"
#: The gate's first opening: every planned hang-up happens at or before this token.
HANG_UP_BY: Final = TOKENS - 5
#: Bounds on waits for an event (a read, a count settling), not budgets: far above what they take.
READ_TIMEOUT_S: Final = 120.0
SETTLE_S: Final = 60.0
#: File descriptors Minato may hold beyond its starting count once the load is gone, on top of one
#: keep-alive connection to Ollama per stream that ended normally (the pool keeps those for a while).
FD_SLACK: Final = 20
T = TypeVar("T")


@dataclass
class Outcome:
    plan: str  # "first", "random" or "full"
    stop_after: int  # tokens to read before hanging up (TOKENS + 1: never)
    status: int | None = None
    tokens: int = 0
    finished: bool = False  # the body ended on its own
    error: str | None = None


def _plans(rng: random.Random) -> list[Outcome]:
    third = STREAMS // 3
    plans = [Outcome("first", 1) for _ in range(third)]
    plans += [Outcome("random", rng.randint(2, HANG_UP_BY)) for _ in range(third)]
    plans += [Outcome("full", TOKENS + 1) for _ in range(STREAMS - 2 * third)]
    rng.shuffle(plans)
    return plans


async def _one_stream(client: httpx.AsyncClient, outcome: Outcome, index: int) -> None:
    params = {"message": f"load test stream {index}"}
    try:
        async with client.stream("GET", f"/stream/{MODEL}", params=params) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                return
            text = ""
            async for chunk in response.aiter_text():
                text += chunk
                outcome.tokens = len(text.split())
                if outcome.tokens >= outcome.stop_after:
                    return  # leaving the block closes the connection mid-stream
            outcome.finished = True
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"


async def _run_load(base_url: str, standin_url: str, outcomes: list[Outcome]) -> None:
    """Start every stream, open the gate to ``HANG_UP_BY``, wait for each hang-up to reach the stand-in,
    then open the gate to the end."""
    limits = httpx.Limits(max_connections=STREAMS + 20, max_keepalive_connections=STREAMS + 20)
    timeout = httpx.Timeout(READ_TIMEOUT_S)
    abandoning = sum(1 for outcome in outcomes if outcome.stop_after <= TOKENS)
    async with (
        httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, trust_env=False) as client,
        httpx.AsyncClient(base_url=standin_url, timeout=timeout, trust_env=False) as standin,
    ):
        streams = [asyncio.create_task(_one_stream(client, outcome, i)) for i, outcome in enumerate(outcomes)]
        (await standin.post("/_standin/gate", json={"tokens": HANG_UP_BY})).raise_for_status()
        deadline = asyncio.get_running_loop().time() + SETTLE_S
        while (cancelled := await _cancelled(standin)) < abandoning:
            assert asyncio.get_running_loop().time() < deadline, f"{cancelled} of {abandoning} hang-ups reached Ollama"
            await asyncio.sleep(0.05)
        (await standin.post("/_standin/gate", json={"tokens": TOKENS})).raise_for_status()
        await asyncio.gather(*streams)


async def _cancelled(standin: httpx.AsyncClient) -> int:
    events = (await standin.get("/_standin/events")).json()
    return sum(1 for event in events if event["model"] == MODEL and event["type"] == "stream_cancelled")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _streams_in_flight(http: httpx.Client) -> float:
    response = http.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        if family.name == "minato_streams_in_flight":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("/metrics has no minato_streams_in_flight gauge")


def _stream_events(standin: httpx.Client) -> dict[str, Counter[str]]:
    """The stand-in's stream events so far, counted by model and kind."""
    counts: dict[str, Counter[str]] = {MODEL: Counter()}
    for event in standin.get("/_standin/events").json():
        if event["model"] in counts and event.get("stream"):
            counts[event["model"]][event["type"]] += 1
    return counts


@pytest.fixture(name="own")
def fx_own(tmp_path: Path) -> Iterator[tuple[MinatoServer, httpx.Client, httpx.Client]]:
    """A stand-in and a Minato of this test's own (no other test's streams or sockets in its counts),
    with a client for each."""
    standin_process = StandInProcess()
    try:
        minato = start_minato(standin_process.url, tmp_path / "minato.log")
        try:
            with (
                httpx.Client(base_url=standin_process.url, timeout=READ_TIMEOUT_S, trust_env=False) as standin,
                httpx.Client(base_url=minato.url, timeout=READ_TIMEOUT_S, trust_env=False) as http,
            ):
                yield minato, standin, http
        finally:
            stop_minato(minato)
    finally:
        standin_process.stop()


@pytest.mark.timeout(300)
def test_hundreds_of_streams_with_disconnects_leave_nothing_behind(
    own: tuple[MinatoServer, httpx.Client, httpx.Client],
) -> None:
    minato, standin, http = own
    standin.post("/_standin/gate", json={"tokens": TOKENS}).raise_for_status()
    warm = http.get(f"/stream/{MODEL}", params={"message": "warm up"})
    assert warm.status_code == 200
    assert len(warm.text.split()) == TOKENS
    pid = minato.process.pid
    fds_before = _open_fds(pid)
    standin.delete("/_standin/events")
    standin.post("/_standin/gate", json={"tokens": 0}).raise_for_status()

    outcomes = _plans(random.Random(20_260_301))
    asyncio.run(_run_load(minato.url, str(standin.base_url), outcomes))

    statuses = Counter(o.status for o in outcomes)
    assert statuses == {200: STREAMS}, f"statuses {statuses}; errors {[o.error for o in outcomes if o.error][:5]}"
    errors = [o for o in outcomes if o.error]
    assert not errors, f"{len(errors)} streams failed, e.g. {errors[:3]}"
    full = [o for o in outcomes if o.plan == "full"]
    assert all(o.finished and o.tokens == TOKENS for o in full), [o for o in full if o.tokens != TOKENS][:5]
    abandoned = [o for o in outcomes if not o.finished]
    assert len(abandoned) == 2 * (STREAMS // 3)
    assert all(o.tokens >= o.stop_after for o in abandoned), "each hung up after its planned tokens"

    eventually(lambda: _streams_in_flight(http), lambda n: n == 0, "minato_streams_in_flight", SETTLE_S)
    # Settled: every stream the stand-in started has ended there, each as the client's plan says.
    expected = {
        MODEL: Counter(stream_started=STREAMS, stream_completed=len(full), stream_cancelled=len(abandoned)),
    }
    eventually(
        lambda: _stream_events(standin), lambda counts: counts == expected, "the stand-in's stream events", SETTLE_S
    )
    assert standin.get("/_standin/active").json() == {"streams": 0}

    # Sockets: the client side is gone; Minato may keep one idle keep-alive connection to Ollama
    # per stream that completed, and nothing for the abandoned ones.
    limit = fds_before + len(full) + FD_SLACK
    eventually(lambda: _open_fds(pid), lambda n: n <= limit, f"Minato's open fds (before: {fds_before})", SETTLE_S)

    assert http.get("/health").status_code == 200
    after = http.get(f"/stream/{MODEL}", params={"message": "still there?"})
    assert after.status_code == 200
    assert len(after.text.split()) == TOKENS
    answer = http.get(f"/{MODEL}", params={"message": "hi"})
    assert answer.status_code == 200
    assert len(answer.json()["response"].split()) == TOKENS
    log = Path(minato.log_path).read_text(errors="replace")
    assert "Exception in ASGI application" not in log
