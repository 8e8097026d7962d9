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
from collections.abc import Iterator
from typing import Any, Final

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from minato.log import record_of

logger = structlog.get_logger("minato.errors")

BUSY_RETRY_AFTER_SECONDS: Final = 5
_MISSING_PARAMETER: Final = re.compile(r"Missing required (\w+) parameter '([^']+)'")
# msgspec's validation messages, as Litestar passes them on (without msgspec's "- at `$...`" path).
_WRONG_TYPE: Final = re.compile(r"Expected `([^`]+)`, got `[^`]+`")
_BOUND: Final = re.compile(r"Expected `[^`]+` (>=|<=|>|<) (\S+)")
_LENGTH: Final = re.compile(r"Expected `([^`]+)` of length (>=|<=) (\d+)")
_MISSING_FIELD: Final = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN_FIELD: Final = re.compile(r"Object contains unknown field `([^`]+)`")
_TYPE_SENTENCES: Final = {
    "int": "must be an integer",
    "float": "must be a number",
    "bool": "must be true or false",
    "str": "must be a string",
    "object": "must be a JSON object",
    "array": "must be a list",
}
_BOUND_SENTENCES: Final = {
    ">=": "must be at least",
    "<=": "must be at most",
    ">": "must be more than",
    "<": "must be less than",
}
#: Litestar's name for the parameter that receives a request body.
_BODY_PARAMETER: Final = "data"


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


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Reshape Litestar's validation failures into the seed API's 422 list, in Minato's words."""
    items: list[ErrorItem] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for entry in extra:
        if isinstance(entry, dict):
            source = entry.get("source") or "query"
            source = str(getattr(source, "value", source))
            key = str(entry.get("key") or "")
            message = str(entry.get("message") or "")
            # The library's words, for the log only; never the query string, which carries the prompt.
            logger.debug("validation_failed", source=source, key=key, library_text=message.split(" '", 1)[0])
            items.append(_validation_item(request, source, key, message))
    if not items:
        missing = _MISSING_PARAMETER.search(exc.detail or "")
        if missing:
            items.append(ErrorItem(loc=[missing[1], missing[2]], msg="field required", type="missing"))
        else:
            items.append(ErrorItem(loc=["request"], msg="is not valid", type="value_error"))
    return error_response(422, msgspec.to_builtins(items))


def _validation_item(request: Request[Any, Any, Any], source: str, key: str, message: str) -> ErrorItem:
    field = key if key != _BODY_PARAMETER else ""
    if missing := _MISSING_FIELD.fullmatch(message):
        return ErrorItem(loc=[source, missing[1]], msg="field required", type="missing")
    if unknown := _UNKNOWN_FIELD.fullmatch(message):
        known = [f.name for f in _struct_fields(request, key)]
        msg = f"unknown field (known: {', '.join(known)})" if known else "unknown field"
        return ErrorItem(loc=[source, unknown[1]], msg=msg, type="extra_forbidden")
    if key == _BODY_PARAMETER and message == repr(key):
        # Litestar's KeyError for a body that is not there at all.
        return ErrorItem(loc=[source], msg="a JSON body is required", type="missing")
    allowed = _literal_values(request, key) if message.startswith("Invalid enum value") else ()
    return ErrorItem(
        loc=[source, field] if field else [source], msg=validation_sentence(message, allowed), type="value_error"
    )


def validation_sentence(message: str, allowed: tuple[Any, ...] = ()) -> str:
    """Minato's sentence for one of msgspec's validation messages ("Expected `int`, got `str`").

    ``allowed`` lists the values of a ``Literal`` parameter, for "must be one of: ...".
    """
    sentence = "is not valid"
    if wrong := _WRONG_TYPE.fullmatch(message):
        kinds = [kind for kind in wrong[1].split(" | ") if kind != "null"]
        if len(kinds) == 1 and kinds[0] in _TYPE_SENTENCES:
            sentence = _TYPE_SENTENCES[kinds[0]]
    elif length := _LENGTH.fullmatch(message):
        count = int(length[3])
        what = "characters" if length[1] == "str" else "items"
        empty = length[2] == ">=" and count == 1
        sentence = "must not be empty" if empty else f"{_BOUND_SENTENCES[length[2]]} {count} {what}"
    elif bound := _BOUND.fullmatch(message):
        sentence = f"{_BOUND_SENTENCES[bound[1]]} {_plain_number(bound[2])}"
    elif message.startswith("Invalid enum value") and allowed:
        sentence = f"must be one of: {', '.join(map(str, allowed))}"
    elif message == "Number out of range":
        sentence = "is out of range"
    return sentence


def _plain_number(text: str) -> str:
    """``100.0`` as ``100``; other numbers as msgspec wrote them."""
    whole, dot, fraction = text.partition(".")
    return whole if dot and fraction.strip("0") == "" and whole.lstrip("-").isdigit() else text


def _declared_types(request: Request[Any, Any, Any], key: str) -> Iterator[msgspec.inspect.Type]:
    """The types the route handler and its dependencies declare for parameter ``key``."""
    handler = request.route_handler
    models = [handler.signature_model]
    models.extend(
        provider.signature_model
        for provider in handler.resolve_dependencies().values()
        if getattr(provider, "signature_model", None) is not None
    )
    for model in models:
        info = msgspec.inspect.type_info(model)
        if isinstance(info, msgspec.inspect.StructType):
            for field in info.fields:
                if field.name == key:
                    yield from _unwrapped(field.type)


def _unwrapped(kind: msgspec.inspect.Type) -> Iterator[msgspec.inspect.Type]:
    if isinstance(kind, msgspec.inspect.Metadata):
        yield from _unwrapped(kind.type)
    elif isinstance(kind, msgspec.inspect.UnionType):
        for member in kind.types:
            yield from _unwrapped(member)
    else:
        yield kind


def _literal_values(request: Request[Any, Any, Any], key: str) -> tuple[Any, ...]:
    for kind in _declared_types(request, key):
        if isinstance(kind, msgspec.inspect.LiteralType):
            return kind.values
    return ()


def _struct_fields(request: Request[Any, Any, Any], key: str) -> tuple[msgspec.inspect.Field, ...]:
    for kind in _declared_types(request, key):
        if isinstance(kind, msgspec.inspect.StructType):
            return kind.fields
    return ()


def _http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc.__cause__, SerializationException):
        # Litestar could not decode a JSON body; its text is the decoder's.
        logger.debug("body_not_json", detail=exc.detail)
        return error_response(422, [{"loc": ["body"], "msg": "is not valid JSON", "type": "json_invalid"}])
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
