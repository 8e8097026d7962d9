"""Ollama's native door under load: a hundred concurrent chat streams, some abandoned, leave nothing behind."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pytest

from tests.support.native_door import (
    USER,
    _bearer,
    _events,
    _tokens_generated,
    fx_door,  # noqa: F401 - a fixture, found by name
)
from tests.support.servers import MinatoServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

# -- disconnects ------------------------------------------------------------------------------------


STREAMS: Final = 100
STREAM_TOKENS: Final = 20
STREAM_MODEL: Final = f"standin/paced:{STREAM_TOKENS}x100"
#: What the abandoned streams ask for: two minutes at the stand-in's pace, so every hang-up reaches
#: the stand-in before that stream could end, however loaded the machine (tests/e2e/test_load.py).
LONG_MODEL: Final = "standin/paced:1200x100"


@dataclass
class _Stream:
    stop_after: int  # lines to read before hanging up (beyond STREAM_TOKENS: never)
    model: str = STREAM_MODEL
    status: int | None = None
    lines: list[dict[str, Any]] | None = None
    finished: bool = False
    error: str | None = None


async def _one_chat(client: httpx.AsyncClient, plan: _Stream, index: int) -> None:
    body = {"model": plan.model, "messages": [{"role": "user", "content": f"stream {index}"}]}
    plan.lines = []
    try:
        async with client.stream("POST", "/api/chat", json=body) as response:
            plan.status = response.status_code
            async for line in response.aiter_lines():
                plan.lines.append(json.loads(line))
                if len(plan.lines) >= plan.stop_after:
                    return  # leaving the block closes the connection mid-stream
            plan.finished = True
    except httpx.HTTPError as exc:
        plan.error = f"{type(exc).__name__}: {exc}"


async def _many_chats(url: str, plans: list[_Stream]) -> None:
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    async with httpx.AsyncClient(
        base_url=url, headers=_bearer(USER), limits=limits, timeout=60, trust_env=False
    ) as client:
        await asyncio.gather(*(_one_chat(client, plan, index) for index, plan in enumerate(plans)))


@pytest.mark.load
@pytest.mark.timeout(300)
def test_a_hundred_concurrent_native_chat_streams_some_abandoned_leave_nothing_behind(
    door: MinatoServer, standin: httpx.Client
) -> None:
    # A third hang up after the first line, a third after five, a third read to the end.
    stops = (1, 5, STREAM_TOKENS + 2)
    plans = [
        _Stream(stop_after=stop, model=STREAM_MODEL if stop > STREAM_TOKENS else LONG_MODEL)
        for stop in (stops[index % 3] for index in range(STREAMS))
    ]
    tokens_before = _tokens_generated(door)

    asyncio.run(_many_chats(door.url, plans))

    assert Counter(plan.status for plan in plans) == {200: STREAMS}, [p.error for p in plans if p.error][:3]
    assert not [plan.error for plan in plans if plan.error]
    full = [plan for plan in plans if plan.stop_after > STREAM_TOKENS]
    for plan in full:
        assert plan.finished
        assert plan.lines is not None
        assert len(plan.lines) == STREAM_TOKENS + 1
        assert all(line["done"] is False and "error" not in line for line in plan.lines[:-1])
        assert plan.lines[-1]["done"] is True
        assert plan.lines[-1]["done_reason"] == "stop"
        assert plan.lines[-1]["eval_count"] == STREAM_TOKENS
    abandoned = [plan for plan in plans if not plan.finished]
    assert len(abandoned) == STREAMS - len(full)

    # Counted once settled (polled within a deadline): each abandoned stream cancelled on the
    # stand-in, each full one completed, none still running there.
    expected = [
        Counter(stream_started=len(full), stream_completed=len(full)),
        Counter(stream_started=len(abandoned), stream_cancelled=len(abandoned)),
    ]
    eventually(
        lambda: [Counter(event["type"] for event in _events(standin, model)) for model in (STREAM_MODEL, LONG_MODEL)],
        lambda counts: counts == expected,
        "the stand-in's stream events (full, abandoned)",
        timeout=60,
    )
    assert standin.get("/_standin/active").json() == {"streams": 0}
    kinds = Counter(event["type"] for event in _events(standin, STREAM_MODEL))
    assert httpx.get(f"{door.url}/health", timeout=10).status_code == 200
    # A full stream counts Ollama's own count; an abandoned one what Minato relayed before its client
    # left: at least the lines the client read, at most what the stand-in sent it (so none twice).
    sent_to_abandoned = sum(
        event["tokens_sent"] for event in _events(standin, LONG_MODEL) if event["type"] == "stream_cancelled"
    )
    counted = _tokens_generated(door) - tokens_before
    read_by_leavers = sum(plan.stop_after for plan in abandoned)
    assert STREAM_TOKENS * len(full) + read_by_leavers <= counted
    assert counted <= STREAM_TOKENS * kinds["stream_completed"] + sent_to_abandoned
