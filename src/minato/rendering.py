"""The one place that knows the body shapes of Minato's errors: rendering them, and documenting them.

Every error body is JSON ``{"detail": "<what went wrong>"}``, except validation errors, which keep
the seed API's list form (``{"detail": [{"loc", "msg", "type"}]}``) so clients can point at the
offending parameter. Messages are Minato's own sentences: library text goes to the log only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from minato.errors import ErrorItem, InvalidInputError, MinatoError, UpstreamError
from minato.record import record_of

logger = structlog.get_logger("minato.errors")
_encode: Final = msgspec.json.Encoder().encode

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


def error_body(detail: str) -> bytes:
    """The body of an error answered below the application (the query-string and connection bounds)."""
    return _encode({"detail": detail})


# -- the shapes, as the OpenAPI document describes them ------------------------------------------------


class ErrorDetail(msgspec.Struct, frozen=True):
    """Body of every non-validation error."""

    detail: str


class ValidationDetail(msgspec.Struct, frozen=True):
    """Body of a 422: which parameters were wrong, and why."""

    detail: list[ErrorItem]


def error_spec(description: str) -> ResponseSpec:
    """Document an error status answered with ``{"detail": "..."}``."""
    return ResponseSpec(data_container=ErrorDetail, description=description, generate_examples=False)


VALIDATION_RESPONSE: Final = ResponseSpec(
    data_container=ValidationDetail,
    description="A parameter is missing or invalid.",
    generate_examples=False,
)
