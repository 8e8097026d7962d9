"""Logging set-up: structlog configured once for the whole process, with the stdlib loggers routed
through the same renderer. Prompts, images and query strings are never logged."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Final

import msgspec
import structlog

from minato.errors import StreamAbortedError
from minato.settings import Settings

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Configure structlog and the stdlib loggers (uvicorn, httpx) once, for the whole process."""
    level = _LEVELS[settings.log_level]
    out = stream if stream is not None else sys.stdout
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if as_json:
        encoder = msgspec.json.Encoder()
        # Tracebacks without local variables: those would carry request headers (API keys) and prompts.
        shared.append(
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer(serializer=lambda obj, **_: encoder.encode(obj).decode())
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Route stdlib records (uvicorn, httpx, asyncio) through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.addFilter(_drop_aborted_stream_tracebacks)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The server's access log would write the query string, i.e. the user's prompt; the
    # request line written by RequestLogMiddleware replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO; the access line already says everything.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _drop_aborted_stream_tracebacks(record: logging.LogRecord) -> bool:
    """Hide the ASGI server's traceback for a deliberately aborted stream, or for a request the server
    cancelled as it shut down (a second Ctrl-C, or the end of ``MINATO_SHUTDOWN_GRACE``): the request
    line already says it was aborted."""
    if not record.exc_info:
        return True
    exc = record.exc_info[1]
    cancelled = record.name == "uvicorn.error" and isinstance(exc, asyncio.CancelledError)
    return not (cancelled or _is_stream_abort(exc, depth=0))


def _is_stream_abort(exc: BaseException | None, depth: int) -> bool:
    # Litestar re-raises it "from" the original, and the stream's task group wraps it in an
    # exception group, so look through causes and group members (to a bounded depth).
    if exc is None or depth > 8:
        return False
    if isinstance(exc, StreamAbortedError):
        return True
    if isinstance(exc, BaseExceptionGroup) and any(_is_stream_abort(e, depth + 1) for e in exc.exceptions):
        return True
    return _is_stream_abort(exc.__cause__ or exc.__context__, depth + 1)


__all__ = ["configure_logging"]
