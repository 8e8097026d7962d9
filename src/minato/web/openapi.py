"""What the OpenAPI document says that Litestar cannot derive from the handlers: the request body a
route really reads, the content types its answer comes in, and the errors Minato answers with.

:func:`document_routes` is the one place that decides the documented errors of every route, from
what a route is (public or keyed, admin, a generation, about a model, with a body, at which door)
and the route's own ``responses`` (which say what only that route knows). It runs once per app over
the app's own copies of its handlers, before the document is first built.

Litestar gets three things wrong on its own: it gives every operation the JSON body of the first
app-level dependency that takes one (so ``GET /health`` would take a generation body), it adds its
own ``{status_code, detail, extra}`` 400 to every route with parameters (Minato answers a 422 in its
own shape instead), and it drops a bound of ``0`` (``minimum: 0``) from a query parameter's schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any, ClassVar, Final

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, RequestBody, Schema
from litestar.response import Stream
from litestar.routes import HTTPRoute

from minato.web.api.common import GENERATION_OPT, RECONNECTABLE_OPT, REQUEST_BODY_OPT
from minato.web.auth import ADMIN, PROBE, PUBLIC
from minato.web.limits import MAX_PATH_BYTES
from minato.web.openapi_msgspec import query_parameters
from minato.web.query import QUERY_OPT
from minato.web.rendering import VALIDATION_RESPONSE, Door, door_error_spec, door_of, error_spec
from minato.web.streaming import StreamFormat

#: The door routes whose body is not JSON, and the one DELETE with a body (Ollama's names the model in it).
_BYTES_BODY: Final = "/api/blobs/"
_DELETE_WITH_BODY: Final = "/api/delete"

#: What a token stream looks like in each format, and the ``Accept`` header that selects it.
ANSWER_STREAM_FORMATS: Final = {
    StreamFormat.TEXT: "The answer's tokens as plain text, written as Ollama yields them (the default).",
    StreamFormat.SSE: (
        "With `Accept: text/event-stream`: server-sent `token` events (and `thinking` events with `think=true`), "
        "then a `done` event with Ollama's stats, or an `error` event."
    ),
    StreamFormat.NDJSON: (
        'With `Accept: application/x-ndjson`: one `{"token": ...}` line per token (`{"thinking": ...}` lines '
        'with `think=true`), then a line with Ollama\'s stats, or an `{"error": ...}` line.'
    ),
}
ANSWER_STREAM_DESCRIPTION: Final = (
    "The answer, streamed. The `Accept` header chooses the format: `text/event-stream` (SSE), "
    "`application/x-ndjson` (NDJSON), anything else plain text. The status is decided before the first "
    "token."
)
PROGRESS_STREAM: Final = (
    "With `?stream=true` or `Accept: application/x-ndjson`: Ollama's progress lines (`status`, `digest`, "
    "`total`, `completed`, `percent`, `backend`), ending with a `success` or an `error` line."
)


@dataclasses.dataclass(frozen=True)
class _Route:
    """What the document needs to know about one handler of one route."""

    path: str
    methods: frozenset[str]
    door: Door
    opt: dict[str, Any]
    reads_json: bool
    reads_form: bool
    has_parameters: bool
    streams: bool

    @property
    def reads_body(self) -> bool:
        return self.reads_json or self.reads_form


def document_routes(app: Litestar) -> None:
    """Give each documented handler of ``app`` its errors and the operation that completes its entry.

    Both are worked out only when the document is first built: most apps (every test's) never build it.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            documentation = _Documentation(route, handler)
            handler.responses = _Errors(documentation)
            handler.operation_class = type(
                "DocumentedOperation", (_DocumentedOperation,), {"documentation": documentation}
            )


class _Documentation:
    """What the document says about one handler of one route, beyond what Litestar derives."""

    def __init__(self, route: HTTPRoute, handler: HTTPRouteHandler) -> None:
        self._route = route
        self._handler = handler
        self.own: Final = dict(handler.responses or {})
        self.success: Final = str(handler.status_code)

    @cached_property
    def facts(self) -> _Route:
        return _facts(self._route, self._handler)

    @cached_property
    def errors(self) -> dict[int, ResponseSpec]:
        return _merged(_errors(self.facts), self.own)


class _Errors(Mapping[int, ResponseSpec]):
    """A handler's ``responses``: its errors, worked out when Litestar first reads them."""

    def __init__(self, documentation: _Documentation) -> None:
        self._documentation = documentation

    def __getitem__(self, status: int) -> ResponseSpec:
        return self._documentation.errors[status]

    def __iter__(self) -> Iterator[int]:
        return iter(self._documentation.errors)

    def __len__(self) -> int:
        return len(self._documentation.errors)


class _DocumentedOperation(Operation):
    """An ``Operation`` that corrects, as soon as Litestar builds it, what Litestar derived for its handler."""

    documentation: ClassVar[_Documentation]

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        documentation = self.documentation
        _complete(self, documentation.facts, documentation.success, {str(s) for s in documentation.errors})


def _facts(route: HTTPRoute, handler: HTTPRouteHandler) -> _Route:
    model = handler.create_kwargs_model(path_parameters={})
    returned = handler.parsed_fn_signature.return_type
    kinds = returned.inner_types if returned.is_union else (returned,)
    return _Route(
        path=route.path_format,
        methods=frozenset(handler.http_methods),
        door=door_of(route.path_format),
        opt=dict(handler.opt),
        reads_json="data" in model.expected_reserved_kwargs,
        reads_form=REQUEST_BODY_OPT in handler.opt,
        has_parameters=bool(route.path_parameters or model.expected_query_params),
        streams=any(kind.is_subclass_of(Stream) for kind in kinds),
    )


#: The 414 of minato.web.limits, answered below the application at every path.
TARGET_TOO_LONG: Final = (
    f"The query string is longer than `MINATO_MAX_QUERY_CHARS` bytes, or the path than {MAX_PATH_BYTES} bytes."
)


def _errors(route: _Route) -> dict[int, ResponseSpec]:
    """The errors a route can answer with beyond what only it knows, in its door's shape."""
    if route.door is not Door.MINATO:
        return _door_errors(route)
    errors: dict[int, ResponseSpec] = {
        # Answered below the application, in Minato's shape at every path.
        414: error_spec(TARGET_TOO_LONG),
    }
    if route.has_parameters or route.reads_body:
        errors[422] = VALIDATION_RESPONSE
    if route.reads_body:
        errors[413] = error_spec("The body is larger than `MINATO_MAX_BODY_BYTES`.")
    if route.opt.get(PUBLIC):
        return errors
    probe = " (unless `MINATO_OPEN_PROBES=true`)" if route.opt.get(PROBE) else ""
    errors[401] = error_spec(
        f"No valid API key{probe}, when keys are configured: send `Authorization: Key <key>`, "
        "`Authorization: Bearer <key>` or `X-API-Key`; see `WWW-Authenticate`."
    )
    errors[429] = error_spec(
        "The key sent more requests per minute than it may, or used up its daily token quota; see `Retry-After`."
    )
    errors[503] = error_spec("The shared state (Redis, or the embedded store) cannot answer; see `Retry-After`.")
    forbidden = []
    if route.opt.get(ADMIN):
        forbidden.append("The route needs an admin key, and this is a user key.")
    if "{model_name}" in route.path:
        forbidden.append("The key may not use this model (its `models` do not match).")
    if route.opt.get(GENERATION_OPT):
        forbidden.append(
            "A user key asked for a `keep_alive` outside 1 s to `MINATO_USER_MAX_KEEP_ALIVE`, or a `num_ctx` "
            "above `MINATO_USER_MAX_NUM_CTX` (admin keys may)."
        )
    if forbidden:
        errors[403] = error_spec(" ".join(forbidden))
    return errors


def _door_errors(route: _Route) -> dict[int, ResponseSpec]:
    """The errors of an Ollama, OpenAI or Anthropic door, in that API's own shape."""
    door = route.door
    errors = {
        400: door_error_spec(door, "The request is malformed, or the backend refused it."),
        404: door_error_spec(door, "No such model (or route)."),
        # Answered below the application: Minato's shape, whatever the door.
        414: error_spec(TARGET_TOO_LONG),
        502: door_error_spec(door, "The backend failed in another way."),
        503: door_error_spec(
            door,
            "No backend is reachable, a backend or Minato's generation queue is busy, or the shared state "
            "cannot answer; busy answers carry `Retry-After`.",
        ),
        504: door_error_spec(door, "The backend did not answer in time."),
    }
    if route.opt.get(PUBLIC):
        return errors
    errors[401] = door_error_spec(door, "No valid API key, when keys are configured; see `WWW-Authenticate`.")
    errors[403] = door_error_spec(
        door, "The key may not use this model, or the route needs an admin key and this is a user key."
    )
    errors[429] = door_error_spec(
        door, "The key sent more requests per minute than it may, or used up its daily token quota."
    )
    if _door_takes_body(route):
        errors[413] = door_error_spec(door, "The body is larger than `MINATO_MAX_BODY_BYTES`.")
    return errors


def _merged(general: dict[int, ResponseSpec], own: Mapping[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    """The route's own responses win; where both describe a status, both sentences are kept."""
    merged = dict(general)
    for status, spec in own.items():
        other = general.get(status)
        if other is None or other is spec or other.description == spec.description:
            merged[status] = spec
        else:
            merged[status] = dataclasses.replace(spec, description=f"{spec.description} {other.description}")
    return dict(sorted(merged.items()))


def _complete(operation: Operation, route: _Route, success: str, documented: set[str]) -> None:
    query_type = route.opt.get(QUERY_OPT)
    if query_type is not None:  # read by the route itself (params.parse_query): Litestar saw none of it
        operation.parameters = [*(operation.parameters or []), *query_parameters(query_type, query_type.required)]
    if not route.reads_json:
        # Litestar's guess: the body of some dependency this route does not use.
        operation.request_body = route.opt.get(REQUEST_BODY_OPT) or _door_body(route)
    responses = operation.responses or {}
    if "400" not in documented:
        responses.pop("400", None)  # Litestar's own shape, for a failure Minato answers as a 422
    answer = responses.get(success)
    if isinstance(answer, OpenAPIResponse):
        if route.door is not Door.MINATO and success == "201":
            # POST defaults to 201 in Litestar; a door answers with the backend's status, 200 when it succeeds.
            del responses[success]
            answer.description = "The backend's answer, relayed (a stream when the request asks for one)."
            responses["200"] = answer
        elif route.streams:
            _describe_stream(answer, route)
    if route.opt.get(RECONNECTABLE_OPT):
        responses["204"] = OpenAPIResponse(
            description=(
                "A browser's `EventSource` reconnected with the `Last-Event-ID` of a Minato stream, which is "
                "never resumed: the 204 stops it."
            )
        )
    operation.responses = dict(sorted(responses.items()))


def _describe_stream(answer: OpenAPIResponse, route: _Route) -> None:
    content = dict(answer.content or {})
    if route.opt.get(GENERATION_OPT):
        answer.description = ANSWER_STREAM_DESCRIPTION
        content = {
            form.value: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description=text))
            for form, text in ANSWER_STREAM_FORMATS.items()
        }
    else:
        answer.description = f"{answer.description} {PROGRESS_STREAM}"
        content[StreamFormat.NDJSON.value] = OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, description=PROGRESS_STREAM)
        )
    answer.content = content


def _door_takes_body(route: _Route) -> bool:
    return "POST" in route.methods or ("DELETE" in route.methods and route.path == _DELETE_WITH_BODY)


def _door_body(route: _Route) -> RequestBody | None:
    """A door's body is the API's own request, relayed as it came: JSON, except a blob's bytes."""
    if route.door is Door.MINATO or not _door_takes_body(route):
        return None
    if route.path.startswith(_BYTES_BODY):
        media, schema = "application/octet-stream", Schema(type=OpenAPIType.STRING, content_media_type=None)
    else:
        media, schema = "application/json", Schema(type=OpenAPIType.OBJECT)
    return RequestBody(
        content={media: OpenAPIMediaType(schema=schema)},
        description="The request as the API's own clients send it; Minato relays it.",
        required=True,
    )
