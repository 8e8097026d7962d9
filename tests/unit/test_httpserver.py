"""The connection bounds' parts that need no server: the automatic cap, the open-file limit, the log."""

from __future__ import annotations

import asyncio
import resource

import pytest
from structlog.testing import capture_logs

from minato.httpserver import BoundLog, ConnectionGuard, automatic_connection_cap, raise_open_file_limit
from minato.settings import Settings

pytestmark = pytest.mark.anyio
WINDOW = 0.01
PAST_THE_WINDOW = 0.05


@pytest.mark.parametrize(
    ("open_files", "cap"),
    [
        (1024, 480),
        (20_000, 9_968),
        (1_048_576, 524_256),
        (100, 18),
        (80, 16),
        (0, 16),
        (resource.RLIM_INFINITY, 524_256),
    ],
)
def test_the_automatic_cap_leaves_a_descriptor_per_connection_for_ollama(open_files: int, cap: int) -> None:
    assert automatic_connection_cap(open_files) == cap


def test_a_configured_cap_wins_over_the_automatic_one() -> None:
    assert ConnectionGuard.from_settings(Settings(max_client_connections=7), 1024).max_connections == 7
    assert ConnectionGuard.from_settings(Settings(), 1024).max_connections == 480


def test_the_guard_answers_in_json_naming_its_bounds() -> None:
    guard = ConnectionGuard(header_timeout=2.5, max_connections=30)

    assert b"2.5 s" in guard.timeout_body
    assert guard.timeout_body.startswith(b'{"detail":')
    assert b"30" in guard.refusal_body


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 65_536))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))

    assert raise_open_file_limit() == 65_536
    assert calls == [(65_536, 65_536)]


def test_a_hard_limit_the_system_refuses_leaves_the_soft_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: int, __: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise the current limit")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", refuse)

    assert raise_open_file_limit() == 256


async def test_a_bound_biting_is_logged_at_once_then_summed_up_per_window() -> None:
    loop = asyncio.get_running_loop()
    log = BoundLog("request_head_timeout", window=WINDOW, header_timeout=1.0)
    with capture_logs() as events:
        for _ in range(500):
            log.hit(loop)
        first = list(events)
        await asyncio.sleep(PAST_THE_WINDOW)

    assert first == [{"event": "request_head_timeout", "count": 1, "header_timeout": 1.0, "log_level": "warning"}]
    assert events[1:] == [
        {
            "event": "request_head_timeout",
            "count": 499,
            "window_s": WINDOW,
            "header_timeout": 1.0,
            "log_level": "warning",
        }
    ]


async def test_a_quiet_window_ends_the_summaries_and_the_next_bite_is_logged_at_once() -> None:
    loop = asyncio.get_running_loop()
    log = BoundLog("client_connection_refused", window=WINDOW)
    with capture_logs() as events:
        log.hit(loop)
        await asyncio.sleep(PAST_THE_WINDOW)
        await asyncio.sleep(PAST_THE_WINDOW)
        log.hit(loop)
        log.hit(loop)

    assert [event["count"] for event in events] == [1, 1], "no summary line for a window without bites"
    assert all("window_s" not in event for event in events)
