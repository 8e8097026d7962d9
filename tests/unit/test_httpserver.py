"""The connection bounds' parts that need no server: the automatic cap, the open-file limit, the log, and
the protocol fed a long request target in-process."""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import pytest
from structlog.testing import capture_logs
from uvicorn.config import Config
from uvicorn.server import ServerState

from minato.server.httpserver import (
    PARSER_URL_LIMIT,
    BoundedHttpToolsProtocol,
    BoundLog,
    ConnectionGuard,
    automatic_connection_cap,
    raise_open_file_limit,
)
from minato.settings import Settings
from minato.web.limits import MAX_PATH_BYTES, longest_request_target

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


def test_the_guard_keeps_the_longest_path_and_query_and_one_byte_more() -> None:
    guard = ConnectionGuard.from_settings(Settings(max_query_chars=100_000), 1024)

    assert guard.max_target == longest_request_target(100_000) == MAX_PATH_BYTES + 1 + 100_000 + 1


class _Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50_000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _serve_target(target: bytes, max_query: int) -> dict[str, Any]:
    """Feed ``GET target`` to the protocol in 64 KiB pieces; return the scope the app saw."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = Config(app=app, lifespan="off", log_config=None)
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.guard = ConnectionGuard(10, max_connections=10, max_target=longest_request_target(max_query))
    transport = _Transport()
    protocol.connection_made(transport)
    data = b"GET " + target + b" HTTP/1.1\r\nhost: minato\r\n\r\n"
    for start in range(0, len(data), 65_536):
        protocol.data_received(data[start : start + 65_536])
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), timeout=10)
    assert transport.written.startswith(b"HTTP/1.1 204 "), bytes(transport.written[:100])
    protocol.connection_lost(None)
    return seen


async def test_a_target_the_url_parser_refuses_reaches_the_app_whole() -> None:
    query = b"message=" + b"a" * 99_992
    scope = await _serve_target(b"/llama3.2:1b?" + query + b"#fragment", max_query=100_000)

    assert len(b"/llama3.2:1b?" + query) > PARSER_URL_LIMIT
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/llama3.2:1b", b"/llama3.2:1b", query)


async def test_a_huge_target_is_kept_only_as_far_as_the_limits_need() -> None:
    scope = await _serve_target(b"/m?" + b"a" * 2_000_000, max_query=65_536)

    assert scope["path"] == "/m"
    kept = len(scope["query_string"])
    assert kept == longest_request_target(65_536) - len(b"/m?"), "the rest was dropped, not buffered"
    assert kept > 65_536, "what is kept is still over the query limit"


async def test_a_huge_path_is_kept_over_the_path_limit() -> None:
    scope = await _serve_target(b"/" + b"p" * 2_000_000 + b"?message=hi", max_query=65_536)

    assert len(scope["raw_path"]) > MAX_PATH_BYTES
    assert scope["query_string"] == b""


async def test_a_short_target_is_parsed_by_uvicorn_as_before() -> None:
    scope = await _serve_target(b"/api/chat?a=1&b=%20", max_query=65_536)

    assert (scope["path"], scope["query_string"]) == ("/api/chat", b"a=1&b=%20")
