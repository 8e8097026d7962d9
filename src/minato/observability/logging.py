"""Logging set-up: structlog configured once for the whole process, with the stdlib loggers routed
through the same renderer, and the request line (:class:`DirectAccessLog`) written without the
processor chain. Prompts, images and query strings are never logged.

structlog runs its documented fast configuration: a filtering bound logger cached on first use, JSON
rendered by msgspec straight to bytes and written to the stream's binary buffer (``BytesLogger``), no
stdlib logging on structlog's path.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec
import structlog
from structlog.typing import EventDict, WrappedLogger

from minato.errors import StreamAbortedError
from minato.observability.record import CURRENT_RECORD
from minato.settings import Settings

if TYPE_CHECKING:
    from minato.observability.record import RequestRecord

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ENCODER: Final = msgspec.json.Encoder()
_UTC: Final = datetime.UTC
#: The event of the request line (the benchmark and operators look for it).
REQUEST_EVENT: Final = "request"

access_logger = structlog.get_logger("minato.access")


class AccessLog(Protocol):
    """Writes the one line of a finished request (:class:`~minato.web.middleware.RequestLogMiddleware`)."""

    def __call__(
        self, method: str, route: str, status: int | None, outcome: str, duration_ms: float, record: RequestRecord
    ) -> None:
        """Log the request ``record`` tells about: ``status`` (``None``: no response began), ``outcome``."""


def log_request(
    method: str, route: str, status: int | None, outcome: str, duration_ms: float, record: RequestRecord
) -> None:
    """The request line through structlog's processor chain, whatever it is configured to do (the
    console format, or a test's ``capture_logs``)."""
    access_logger.info(
        REQUEST_EVENT,
        method=method,
        route=route,
        model=record.model,
        status=status,
        outcome=outcome,
        duration_ms=duration_ms,
        tokens=record.tokens,
        **({"backend": record.backend} if record.backend else {}),
    )


class AccessLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The JSON request line: the fields, values and order :func:`log_request` gives through the
    configured JSON chain (``add_request_facts``, ``add_log_level``, ``TimeStamper``; a test compares them)."""

    method: str
    route: str
    model: str | None
    status: int | None
    outcome: str
    duration_ms: float
    tokens: int | None
    backend: str = ""
    event: str
    request_id: str
    key: str | None = None
    level: str
    timestamp: datetime.datetime
    """``TimeStamper(fmt="iso", utc=True)``'s text: msgspec writes an aware UTC time the same way."""


class DirectAccessLog:
    """The request line rendered without the processor chain: one msgspec encode of an
    :class:`AccessLine`, one write to the log stream. Used when the configured format is JSON (it renders
    what the chain would); the line is at info level, so it exists only when info is logged."""

    __slots__ = ("_write",)

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def __call__(
        self, method: str, route: str, status: int | None, outcome: str, duration_ms: float, record: RequestRecord
    ) -> None:
        caller = record.caller
        self._write(
            _ENCODER.encode(
                AccessLine(
                    method=method,
                    route=route,
                    model=record.model,
                    status=status,
                    outcome=outcome,
                    duration_ms=duration_ms,
                    tokens=record.tokens,
                    backend=record.backend,
                    event=REQUEST_EVENT,
                    request_id=record.request_id,
                    key=caller.name if caller is not None else None,
                    level="info",
                    timestamp=datetime.datetime.now(_UTC),
                )
            )
        )


def add_request_facts(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A processor: the request id and the key's name of the request being served, on every line
    logged while it is (from :data:`~minato.observability.record.CURRENT_RECORD`)."""
    record = CURRENT_RECORD.get()
    if record is not None:
        event_dict.setdefault("request_id", record.request_id)
        caller = record.caller
        if caller is not None:
            event_dict.setdefault("key", caller.name)
    return event_dict


def configure_logging(settings: Settings, *, stream: Any = None) -> AccessLog | None:
    """Configure structlog and the stdlib loggers (uvicorn, httpx) once, for the whole process.

    Returns how the request line is to be written: directly (JSON), through structlog (the console
    format), or not at all (``None``: the level is above info)."""
    level = _LEVELS[settings.log_level]
    out = stream if stream is not None else sys.stdout
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_facts,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON lines skip the text layer when the stream has a binary buffer under it (sys.stdout has).
    binary = getattr(out, "buffer", None) if as_json else None
    sink: structlog.BytesLogger | structlog.WriteLogger
    text_renderer: Any
    if as_json:
        # Tracebacks without local variables: those would carry request headers (API keys) and prompts.
        shared.append(
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        )
        text_renderer = structlog.processors.JSONRenderer(serializer=lambda obj, **_: _ENCODER.encode(obj).decode())
    else:
        text_renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    if binary is not None:
        sink = structlog.BytesLogger(binary)
        renderer = structlog.processors.JSONRenderer(serializer=lambda obj, **_: _ENCODER.encode(obj))
    else:
        sink = structlog.WriteLogger(out)
        renderer = text_renderer
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One sink for every logger: its lock keeps lines whole, the request line's included.
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )
    # Route stdlib records (uvicorn, httpx, asyncio) through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
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
    if level > logging.INFO:
        return None
    if not as_json:
        return log_request
    if isinstance(sink, structlog.BytesLogger):
        return DirectAccessLog(sink.msg)
    text = sink
    return DirectAccessLog(lambda line: text.msg(line.decode()))


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


__all__ = [
    "REQUEST_EVENT",
    "AccessLine",
    "AccessLog",
    "DirectAccessLog",
    "access_logger",
    "add_request_facts",
    "configure_logging",
    "log_request",
]
