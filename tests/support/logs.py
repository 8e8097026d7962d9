"""Putting back the logging set-up a test changed, and capturing log events as the configured chain
enriches them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from minato.observability.logging import add_request_facts


def captured() -> Any:
    """``capture_logs`` with what the configured chain adds to every line first: the context variables,
    and the request id and key's name of the request being served."""
    return capture_logs(processors=[structlog.contextvars.merge_contextvars, add_request_facts])


@pytest.fixture(name="restore_logging")
def fx_restore_logging() -> Iterator[None]:
    """Put back the stdlib logging state ``configure_logging`` rewires."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore"]
    saved = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
            logging.getLogger(name).disabled,
        )
        for name in names
    }
    yield
    structlog.reset_defaults()
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled
