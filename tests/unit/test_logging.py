"""Log output without the app: JSON lines, levels, formats, hidden tracebacks."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
import structlog

from minato.errors import StreamAbortedError
from minato.observability.logging import configure_logging
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
