"""The one place that knows the body shapes of Minato's errors: rendering them, and documenting them.

Minato's own API answers ``{"detail": "<what went wrong>"}``, except validation errors, which keep
the seed API's list form (``{"detail": [{"loc", "msg", "type"}]}``) so clients can point at the
offending parameter. Messages are Minato's own sentences: library text goes to the log only.

The front doors answer in their own dialect, so that every SDK raises its own exception type:
Ollama's ``{"error": "..."}`` under ``/api/``, OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` under ``/v1/``, and Anthropic's ``{"type": "error", "error": {"type", "message"}}`` at
``/v1/messages``, each with the type names Ollama's own middleware uses for a status. The door is
read from the path, because a refusal may come before any route matched (a 401, or a 404 for a path
no route serves); the shape is the only thing it decides.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from typing import Any, Final, Literal

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from minato.errors import ErrorItem, InvalidInputError, MinatoError, UpstreamError
from minato.observability.record import record_of
from minato.web.hints import unknown_name_sentence

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


class Door(enum.Enum):
    """Whose API a request speaks, and so the shape of its errors."""

    MINATO = "minato"
    OLLAMA = "ollama"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def door_of(path: str) -> Door:
    """The door a request path belongs to."""
    top = path[: path.find("/", 1)] if path.find("/", 1) > 0 else path
    if top == "/api":
        return Door.OLLAMA
    if top == "/v1":
        return Door.ANTHROPIC if path.rstrip("/") == "/v1/messages" else Door.OPENAI
    return Door.MINATO


#: Ollama's ``/v1`` type names by status (``openai/openai.go``); every other status is ``api_error``.
_OPENAI_TYPES: Final = {400: "invalid_request_error", 404: "not_found_error"}
#: Ollama's Anthropic type names by status (``anthropic/anthropic.go``); otherwise ``api_error``.
_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


# -- the shapes: each is encoded on the wire and described in the OpenAPI document from the same Struct --


class ErrorDetail(msgspec.Struct, frozen=True):
    """Body of every non-validation error."""

    detail: str


class ValidationDetail(msgspec.Struct, frozen=True):
    """Body of a 422: which parameters were wrong, and why."""

    detail: list[ErrorItem]


class OllamaErrorBody(msgspec.Struct, frozen=True):
    """Body of an error under ``/api/``, as Ollama answers it."""

    error: str


class OpenAIError(msgspec.Struct, frozen=True):
    """What went wrong, as OpenAI describes it."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct, frozen=True):
    """Body of an error under ``/v1/``, as OpenAI answers it."""

    error: OpenAIError


class AnthropicError(msgspec.Struct, frozen=True):
    """What went wrong, as Anthropic describes it."""

    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, frozen=True):
    """Body of an error at ``/v1/messages``, as Anthropic answers it."""

    type: Literal["error"]
    error: AnthropicError


class OpenAIStreamError(msgspec.Struct, frozen=True):
    """The ``error`` event of a ``/v1/responses`` stream: OpenAI's error, typed as an event."""

    type: Literal["error"]
    error: OpenAIError


def door_error(door: Door, status_code: int, message: str) -> msgspec.Struct:
    """The body of an error answered at ``door``, in its shape."""
    if door is Door.OLLAMA:
        return OllamaErrorBody(message)
    if door is Door.ANTHROPIC:
        return AnthropicErrorBody("error", AnthropicError(_ANTHROPIC_TYPES.get(status_code, "api_error"), message))
    if door is Door.OPENAI:
        return OpenAIErrorBody(_openai_error(status_code, message))
    return ErrorDetail(message)


def door_error_body(door: Door, status_code: int, message: str) -> bytes:
    """The encoded body of an error answered at ``door``."""
    return _encode(door_error(door, status_code, message))


def _openai_error(status_code: int, message: str) -> OpenAIError:
    return OpenAIError(message, _OPENAI_TYPES.get(status_code, "api_error"), None, None)


class StreamDialect(enum.Enum):
    """How a door's stream is framed, and so how a failure in its middle is told to the client."""

    NDJSON = "ndjson"  # Ollama's native streams
    OPENAI = "openai"  # /v1/chat/completions, /v1/completions: ``data:`` frames ending in [DONE]
    RESPONSES = "responses"  # /v1/responses: named events ending in response.completed
    ANTHROPIC = "anthropic"  # /v1/messages: named events ending in message_stop


def stream_error_frame(dialect: StreamDialect, message: str) -> bytes:
    """The last frame of a stream that broke: one its dialect's SDKs raise on, never a quiet end."""
    if dialect is StreamDialect.NDJSON:
        return _encode(OllamaErrorBody(message)) + b"\n"
    if dialect is StreamDialect.OPENAI:
        return b"data: " + _encode(OpenAIErrorBody(_openai_error(500, message))) + b"\n\n"
    if dialect is StreamDialect.RESPONSES:
        return b"event: error\ndata: " + _encode(OpenAIStreamError("error", _openai_error(500, message))) + b"\n\n"
    return b"event: error\ndata: " + _encode(door_error(Door.ANTHROPIC, 500, message)) + b"\n\n"


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None, *, path: str = "/"
) -> Response[Any]:
    """Build the JSON error response every failure path uses, in the shape of the path's door."""
    return _json_response(status_code, door_error(door_of(path), status_code, detail), headers)


def _json_response(status_code: int, body: msgspec.Struct, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=_encode(body), status_code=status_code, headers=headers, media_type="application/json")


def _items_response(status_code: int, items: list[ErrorItem], path: str) -> Response[Any]:
    """A validation error: the seed API's list on Minato's own routes, one sentence at a door."""
    if door_of(path) is not Door.MINATO:
        return error_response(status_code, InvalidInputError(items).detail, path=path)
    return _json_response(status_code, ValidationDetail(items))


def _minato_error(request: Request[Any, Any, Any], exc: MinatoError) -> Response[Any]:
    path = request.scope["path"]
    if isinstance(exc, InvalidInputError):
        return _items_response(exc.status_code, exc.items, path)
    if isinstance(exc, UpstreamError):
        record = record_of(request.scope)
        if record is not None:
            record.upstream_error = type(exc).__name__
    if exc.status_code >= 500:
        logger.warning("upstream_error", kind=type(exc).__name__, status=exc.status_code, detail=exc.detail)
    return error_response(exc.status_code, exc.detail, exc.headers, path=path)


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
    return _items_response(422, items, request.scope["path"])


def _validation_item(request: Request[Any, Any, Any], source: str, key: str, message: str) -> ErrorItem:
    field = key if key != _BODY_PARAMETER else ""
    if missing := _MISSING_FIELD.fullmatch(message):
        return ErrorItem(loc=[source, missing[1]], msg="field required", type="missing")
    if unknown := _UNKNOWN_FIELD.fullmatch(message):
        known = [f.name for f in _struct_fields(request, key)]
        msg = unknown_name_sentence(unknown[1], known, "field") if known else "unknown field"
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


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    path = request.scope["path"]
    if isinstance(exc.__cause__, SerializationException):
        # Litestar could not decode a JSON body; its text is the decoder's.
        logger.debug("body_not_json", detail=exc.detail)
        return _items_response(422, [ErrorItem(loc=["body"], msg="is not valid JSON", type="json_invalid")], path)
    detail = exc.detail
    if exc.status_code in _ROUTING_SENTENCES and detail == _ROUTING_DEFAULTS[exc.status_code]:
        # Litestar's router found no route (or none for this method). The path is not echoed:
        # it may carry what the client meant as a model name or a key.
        detail = _ROUTING_SENTENCES[exc.status_code].format(method=request.method)
    return error_response(exc.status_code, detail, exc.headers, path=path)


#: Litestar's own words when routing fails, and Minato's.
_ROUTING_DEFAULTS: Final = {404: "Not Found", 405: "Method Not Allowed"}
_ROUTING_SENTENCES: Final = {404: "no such route", 405: "this route does not take {method}"}


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.exception("unhandled_error", path=request.url.path, kind=type(exc).__name__)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error", path=request.scope["path"])


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    MinatoError: _minato_error,
    ValidationException: _validation_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}


def error_body(detail: str) -> bytes:
    """The body of an error answered below the application (the query-string and connection bounds)."""
    return _encode(ErrorDetail(detail))


# -- the shapes, as the OpenAPI document describes them ------------------------------------------------


def error_spec(description: str) -> ResponseSpec:
    """Document an error status answered with ``{"detail": "..."}``."""
    return ResponseSpec(data_container=ErrorDetail, description=description, generate_examples=False)


VALIDATION_RESPONSE: Final = ResponseSpec(
    data_container=ValidationDetail,
    description="A parameter is missing or invalid.",
    generate_examples=False,
)


_DOOR_BODIES: Final[dict[Door, type[msgspec.Struct]]] = {
    Door.MINATO: ErrorDetail,
    Door.OLLAMA: OllamaErrorBody,
    Door.OPENAI: OpenAIErrorBody,
    Door.ANTHROPIC: AnthropicErrorBody,
}


def door_error_spec(door: Door, description: str) -> ResponseSpec:
    """Document an error status answered at ``door``, in the shape :func:`error_response` gives it."""
    return ResponseSpec(data_container=_DOOR_BODIES[door], description=description, generate_examples=False)
