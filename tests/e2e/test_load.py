"""Hundreds of concurrent streams through Minato, two thirds of them abandoned part-way.

Each stream asks the stand-in for ``standin/paced:20x100`` (20 tokens, 100 ms apart). A third of the
clients hang up after the first token, a third after a random number of tokens, a third read to the
end. Afterwards nothing may be left behind: no stream counted in flight, no request still open on
the stand-in, no sockets piling up in Minato, and Minato answers as before.

Why 100 ms and not 20 ms between tokens: 300 streams starting at once on a 2-core machine put the
first token about a second after the request. A 20 ms stream (0.4 s) has then already ended on the
stand-in before any client can hang up, so no disconnect could reach Ollama and the cancellation
checks would test nothing. At 100 ms a stream lasts 2 s, and the latest planned hang-up (token 15)
leaves 0.5 s for it to reach the stand-in.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Backend, MinatoServer

pytestmark = pytest.mark.e2e

STREAMS: Final = 300
TOKENS: Final = 20
TOKEN_MS: Final = 100
MODEL: Final = f"standin/paced:{TOKENS}x{TOKEN_MS}"
WHOLE_RUN_S: Final = 30.0
SETTLE_S: Final = 5.0
#: File descriptors Minato may hold beyond its starting count once the load is gone, on top of one
#: keep-alive connection to Ollama per stream that ended normally (the pool keeps those for a while).
FD_SLACK: Final = 20
#: Hang-ups that may race the end of their stream on a busy machine.
CANCEL_SLACK: Final = STREAMS // 20

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
    plans += [Outcome("random", rng.randint(2, TOKENS - 5)) for _ in range(third)]
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


async def _run_load(base_url: str, outcomes: list[Outcome]) -> None:
    limits = httpx.Limits(max_connections=STREAMS + 20, max_keepalive_connections=STREAMS + 20)
    timeout = httpx.Timeout(20.0, pool=20.0)
    async with (
        httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, trust_env=False) as client,
        asyncio.timeout(WHOLE_RUN_S),
    ):
        await asyncio.gather(*(_one_stream(client, outcome, i) for i, outcome in enumerate(outcomes)))


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _streams_in_flight(http: httpx.Client) -> float:
    response = http.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        if family.name == "minato_streams_in_flight":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("/metrics has no minato_streams_in_flight gauge")


def _eventually(read: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = SETTLE_S) -> T:
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    assert done(value), f"{what}: still {value!r} after {timeout} s"
    return value


@pytest.mark.timeout(90)
def test_hundreds_of_streams_with_disconnects_leave_nothing_behind(
    minato: MinatoServer, backend: Backend, standin: httpx.Client, http: httpx.Client
) -> None:
    assert backend.kind == "standin"
    warm = http.get(f"/stream/{MODEL}", params={"message": "warm up"})
    assert warm.status_code == 200
    assert len(warm.text.split()) == TOKENS
    pid = minato.process.pid
    fds_before = _open_fds(pid)
    standin.delete("/_standin/events")

    outcomes = _plans(random.Random(20_260_301))
    started = time.monotonic()
    asyncio.run(_run_load(minato.url, outcomes))
    elapsed = time.monotonic() - started

    statuses = Counter(o.status for o in outcomes)
    assert statuses == {200: STREAMS}, f"statuses {statuses}; errors {[o.error for o in outcomes if o.error][:5]}"
    errors = [o for o in outcomes if o.error]
    assert not errors, f"{len(errors)} streams failed, e.g. {errors[:3]}"
    full = [o for o in outcomes if o.plan == "full"]
    assert all(o.finished and o.tokens == TOKENS for o in full), [o for o in full if o.tokens != TOKENS][:5]
    abandoned = [o for o in outcomes if not o.finished]
    assert len(abandoned) >= 2 * (STREAMS // 3) - 5, "almost every planned disconnect happened before the end"

    _eventually(lambda: _streams_in_flight(http), lambda n: n == 0, "minato_streams_in_flight")
    _eventually(lambda: standin.get("/_standin/active").json(), lambda a: a == {"streams": 0}, "stand-in streams")

    events = Counter(
        e["type"] for e in standin.get("/_standin/events").json() if e["model"] == MODEL and e.get("stream")
    )
    assert events["stream_started"] == STREAMS
    assert events["stream_started"] == events["stream_cancelled"] + events["stream_completed"]
    # A hang-up can race the last token: the stand-in may have finished by the time Minato sees it.
    assert len(abandoned) - CANCEL_SLACK <= events["stream_cancelled"] <= len(abandoned), events
    assert events["stream_completed"] >= len(full), events

    # Sockets: the client side is gone; Minato may keep one idle keep-alive connection to Ollama
    # per stream that completed, and nothing for the abandoned ones.
    limit = fds_before + events["stream_completed"] + FD_SLACK
    _eventually(lambda: _open_fds(pid), lambda n: n <= limit, f"Minato's open fds (before: {fds_before})")

    assert http.get("/health").status_code == 200
    after = http.get(f"/stream/{MODEL}", params={"message": "still there?"})
    assert after.status_code == 200
    assert len(after.text.split()) == TOKENS
    answer = http.get(f"/{backend.model}", params={"message": "hi"})
    assert answer.status_code == 200
    assert answer.json()["response"]
    log = Path(minato.log_path).read_text(errors="replace")
    assert "Exception in ASGI application" not in log
    assert elapsed < WHOLE_RUN_S
