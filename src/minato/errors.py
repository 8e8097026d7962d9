"""Minato's error tree and the one place that turns errors into HTTP responses.

::

    MinatoError                      (status decided by the subclass)
    ├── InvalidInputError            422  {"detail": [{"loc", "msg", "type"}]}
    ├── PayloadTooLargeError         413
    ├── CapabilityError              400  the model cannot do what was asked (e.g. vision)
    ├── ForbiddenError               403  the caller's key may not do this (an admin key may)
    ├── RequestTimeoutError          408  the request body did not arrive in time
    ├── ClientDisconnectedError      499  the client left before its answer was ready (logged, never sent)
    ├── ModelNotFoundError           404  Ollama does not know the model
    ├── SessionNotFoundError         404  no conversation with that id
    ├── AmbiguousSessionError        409  an admin named an id several keys have, without owner=
    ├── SessionDamagedError          409  the store's pages holding a conversation are damaged
    └── UpstreamError                502  Ollama failed in some other way
        ├── UpstreamRejectedError    400  Ollama refused the request as malformed
        ├── OllamaUnavailableError   503  no connection to Ollama
        ├── OllamaBusyError          503  Ollama's queue is full (with Retry-After)
        └── OllamaTimeoutError       504  Ollama did not answer in time

Every error body is JSON: ``{"detail": "<what went wrong>"}``, except validation errors, which keep
the seed API's list form so existing clients can point at the offending parameter.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from minato.log import record_of

logger = structlog.get_logger("minato.errors")

BUSY_RETRY_AFTER_SECONDS: Final = 5
_MISSING_PARAMETER: Final = re.compile(r"Missing required (\w+) parameter '([^']+)'")


class ErrorItem(msgspec.Struct, frozen=True):
    """One validation problem, shaped as in the seed API."""

    loc: list[str | int]
    msg: str
    type: str


class MinatoError(Exception):
    """Base of every error Minato raises on purpose."""

    status_code: int = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidInputError(MinatoError):
    """The request names a parameter with a bad value."""

    status_code = 422

    def __init__(self, items: list[ErrorItem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in items))
        self.items = items

    @classmethod
    def single(cls, source: str, name: str, msg: str, kind: str = "value_error") -> InvalidInputError:
        """Build the error for one parameter."""
        return cls([ErrorItem(loc=[source, name], msg=msg, type=kind)])


class PayloadTooLargeError(MinatoError):
    """A body, an image or a count exceeds a configured limit."""

    status_code = 413


class CapabilityError(MinatoError):
    """The model lacks a capability the route needs."""

    status_code = 400


class ForbiddenError(MinatoError):
    """The caller's key may not do what it asked; an admin key may."""

    status_code = 403


class RequestTimeoutError(MinatoError):
    """The client did not send its request body in time."""

    status_code = 408


class ClientDisconnectedError(MinatoError):
    """The client went away before its answer was ready (logged as nginx's 499)."""

    status_code = 499


class ModelNotFoundError(MinatoError):
    """Ollama has no such model."""

    status_code = 404


class SessionNotFoundError(MinatoError):
    """No conversation has that id (or it expired)."""

    status_code = 404


class AmbiguousSessionError(MinatoError):
    """Several keys have a conversation with that id, and the admin did not say whose."""

    status_code = 409


class SessionDamagedError(MinatoError):
    """The session store cannot read or write a conversation: its pages are damaged.

    A 409, not a 5xx: clients retry server errors, and no retry can help; deleting it can.
    """

    status_code = 409

    def __init__(self, owner: str, session_id: str, reason: str) -> None:
        # With the owner named, the DELETE is right for the owner's key and for an admin's alike.
        target = f"/chat/{session_id}?owner={owner}" if owner else f"/chat/{session_id}"
        super().__init__(
            f"conversation '{session_id}' is damaged in the session store ({reason}); DELETE {target} removes it"
        )
        self.owner = owner
        self.session_id = session_id


class UpstreamError(MinatoError):
    """Ollama answered with an error Minato cannot attribute to the caller."""

    status_code = 502


class UpstreamRejectedError(UpstreamError):
    """Ollama rejected the request as invalid (its 400)."""

    status_code = 400


class OllamaUnavailableError(UpstreamError):
    """Ollama cannot be reached."""

    status_code = 503


class OllamaBusyError(UpstreamError):
    """Ollama's own queue is full; the caller should retry later."""

    status_code = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})


class OllamaTimeoutError(UpstreamError):
    """Ollama did not answer within the configured time."""

    status_code = 504


def error_response(status_code: int, detail: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    """Build the JSON error response every failure path uses."""
    return Response(
        content={"detail": detail},
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _minato_error(request: Request[Any, Any, Any], exc: MinatoError) -> Response[Any]:
    if isinstance(exc, InvalidInputError):
        return error_response(exc.status_code, msgspec.to_builtins(exc.items))
    if isinstance(exc, UpstreamError):
        record = record_of(request.scope)
        if record is not None:
            record.upstream_error = type(exc).__name__
    if exc.status_code >= 500:
        logger.warning("upstream_error", kind=type(exc).__name__, status=exc.status_code, detail=exc.detail)
    return error_response(exc.status_code, exc.detail, exc.headers)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Reshape Litestar's validation failures into the seed API's 422 list."""
    items: list[dict[str, Any]] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for entry in extra:
        if isinstance(entry, dict):
            source = entry.get("source") or "query"
            source = str(getattr(source, "value", source))
            key = str(entry.get("key") or "")
            message = str(entry.get("message") or exc.detail)
            items.append({"loc": [source, key] if key else [source], "msg": message, "type": "value_error"})
    if not items:
        missing = _MISSING_PARAMETER.search(exc.detail or "")
        if missing:
            items.append({"loc": [missing[1], missing[2]], "msg": "field required", "type": "missing"})
        else:
            items.append({"loc": ["request"], "msg": exc.detail, "type": "value_error"})
    return error_response(422, items)


def _http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return error_response(exc.status_code, exc.detail, exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.exception("unhandled_error", path=request.url.path, kind=type(exc).__name__)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error")


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    MinatoError: _minato_error,
    ValidationException: _validation_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
