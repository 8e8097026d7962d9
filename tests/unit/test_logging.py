"""Log output without the app: JSON lines, levels, formats, hidden tracebacks."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Literal

import pytest
import structlog

from minato.auth.caller import Caller, Role
from minato.errors import StreamAbortedError
from minato.observability.logging import DirectAccessLog, configure_logging, log_request
from minato.observability.record import CURRENT_RECORD, RequestRecord
from minato.settings import Settings
from tests.support.logs import fx_restore_logging  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_are_one_parseable_object_per_line() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)

    structlog.get_logger("test").info("request", method="GET", status=200, note='caf\u00e9 "q"')
    logging.getLogger("uvicorn.error").warning("Started server process")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "request"
    assert lines[0]["status"] == 200
    assert lines[0]["note"] == 'caf\u00e9 "q"'
    assert lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")
    assert lines[1]["event"] == "Started server process"
    assert lines[1]["level"] == "warning"
    assert lines[1]["logger"] == "uvicorn.error"


@pytest.mark.usefixtures("restore_logging")
def test_the_log_level_filters_lower_events() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="warning"), stream=out)

    structlog.get_logger("test").info("hidden")
    structlog.get_logger("test").warning("shown")
    logging.getLogger("httpx").info("HTTP Request: POST http://ollama/api/chat")

    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["shown"]


@pytest.mark.usefixtures("restore_logging")
def test_auto_format_is_json_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="auto"), stream=out)

    structlog.get_logger("test").info("hello")

    assert json.loads(out.getvalue())["event"] == "hello"


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_human_readable() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="console"), stream=out)

    structlog.get_logger("test").info("hello", status=200)

    text = out.getvalue()
    assert "hello" in text
    assert "status=200" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.usefixtures("restore_logging")
def test_the_traceback_of_a_directly_chained_aborted_stream_is_hidden() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)

    try:
        try:
            raise StreamAbortedError("runner crashed")
        except StreamAbortedError as inner:
            raise RuntimeError("ASGI callable failed") from inner
    except RuntimeError as exc:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
    logging.getLogger("uvicorn.error").error("something else")

    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["something else"]


@pytest.mark.usefixtures("restore_logging")
def test_the_traceback_of_a_request_the_server_cancelled_is_hidden() -> None:
    """uvicorn cancels running requests at the end of the shutdown grace or on a second Ctrl-C, and logs
    each at error level; the request line already says the request was aborted."""
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)

    try:
        raise asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded")
    except asyncio.CancelledError as exc:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
        logging.getLogger("minato.elsewhere").error("cancelled where nothing expects it", exc_info=exc)
    try:
        raise RuntimeError("a real failure")
    except RuntimeError as exc:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)

    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(event["event"], event["exception"][0]["exc_type"]) for event in logged] == [
        ("cancelled where nothing expects it", "CancelledError"),
        ("Exception in ASGI application", "RuntimeError"),
    ]


def _record(*, full: bool) -> RequestRecord:
    record = RequestRecord("abc-123", 0.0)
    if full:
        record.model = "llama3.2:1b"
        record.tokens = 3
        record.backend = "127.0.0.1:11434"
        record.caller = Caller("0123456789ab", Role.USER, "alice")
    return record


@pytest.mark.parametrize("full", [pytest.param(True, id="every-fact"), pytest.param(False, id="no-facts")])
@pytest.mark.usefixtures("restore_logging")
def test_the_direct_request_line_is_the_line_the_chain_renders(full: bool) -> None:
    """The request line skips the processor chain when the format is JSON: same fields, values and order."""
    out = io.StringIO()
    direct = configure_logging(Settings(log_format="json"), stream=out)
    # Nothing logged here may stay bound to this test's stream.
    structlog.configure(cache_logger_on_first_use=False)
    record = _record(full=full)
    status = 200 if full else None
    outcome = "ok" if full else "aborted"
    current = CURRENT_RECORD.set(record)
    try:
        log_request("GET", "/{model_name}", status, outcome, 1.25, record)
        assert isinstance(direct, DirectAccessLog)
        direct("GET", "/{model_name}", status, outcome, 1.25, record)
    finally:
        CURRENT_RECORD.reset(current)

    chained, written = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(written) == list(chained)
    assert {**written, "timestamp": ""} == {**chained, "timestamp": ""}
    assert written["timestamp"].endswith("Z")
    expected = {"event": "request", "request_id": "abc-123", "level": "info", "status": status, "outcome": outcome}
    assert expected.items() <= written.items()
    assert ("key" in written, "backend" in written) == (full, full)


@pytest.mark.usefixtures("restore_logging")
def test_the_direct_request_line_goes_to_the_streams_bytes() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    direct = configure_logging(Settings(log_format="json"), stream=out)
    structlog.configure(cache_logger_on_first_use=False)
    record = _record(full=True)
    record.model = "caf\u00e9"

    assert direct is not None
    direct("GET", "/{model_name}", 200, "ok", 1.0, record)
    logging.getLogger("uvicorn.error").warning("after it")

    lines = [json.loads(line) for line in raw.getvalue().decode().splitlines()]
    assert [(line["event"], line.get("model")) for line in lines] == [("request", "caf\u00e9"), ("after it", None)]


@pytest.mark.parametrize(
    ("log_format", "log_level", "writer"),
    [
        pytest.param("console", "info", "chain", id="console-through-structlog"),
        pytest.param("json", "warning", "none", id="above-info-no-line"),
        pytest.param("console", "error", "none", id="console-above-info-no-line"),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_the_request_line_goes_through_structlog_or_nowhere_otherwise(
    log_format: Literal["console", "json"], log_level: Literal["info", "warning", "error"], writer: str
) -> None:
    access = configure_logging(Settings(log_format=log_format, log_level=log_level), stream=io.StringIO())

    assert access is (log_request if writer == "chain" else None)


@pytest.mark.usefixtures("restore_logging")
def test_lines_logged_during_a_request_carry_its_id_and_key() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)
    structlog.configure(cache_logger_on_first_use=False)
    current = CURRENT_RECORD.set(_record(full=True))
    try:
        structlog.get_logger("test").warning("during", request_id="explicit-wins")
        structlog.get_logger("test").warning("during")
        logging.getLogger("uvicorn.error").warning("stdlib during")
    finally:
        CURRENT_RECORD.reset(current)
    structlog.get_logger("test").warning("after")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line.get("request_id"), line.get("key")) for line in lines] == [
        ("during", "explicit-wins", "alice"),
        ("during", "abc-123", "alice"),
        ("stdlib during", "abc-123", "alice"),
        ("after", None, None),
    ]
