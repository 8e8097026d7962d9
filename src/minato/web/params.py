"""The generation routes' query parameters (HTTP side): query string in, validated options out.

Only parameters the caller set are forwarded, so Ollama's and the model's own defaults apply to
everything else. ``keep_alive`` and the system prompt are top-level Ollama fields; the rest go into
Ollama's ``options``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple, TypeVar

import msgspec
from litestar import Request
from litestar.openapi.spec import OpenAPIType, Parameter, Schema
from msgspec import UNSET, UnsetType

from minato.auth.caller import Caller
from minato.core.policy import Policy, plain_seconds
from minato.errors import ErrorItem, InvalidInputError
from minato.ollama.options import (
    MAX_STOP_SEQUENCES,
    OPTIONS,
    OptionSpec,
    check_stop,
    parse_keep_alive,
)
from minato.ollama.wire import ChatRequest, WireMessage
from minato.settings import Settings
from minato.state.conversations import validate_session_id
from minato.web.hints import unknown_name_sentence
from minato.web.rendering import validation_sentence

#: Ollama model references: ``[host/][namespace/]name[:tag]``.
_MODEL_NAME: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?::\d{1,5}(?=/))?"  # first segment: a name, or a registry host with its port
    r"(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]*)?"
)
MAX_MODEL_NAME: Final = 350

KEEP_ALIVE_DESCRIPTION: Final = (
    "How long Ollama keeps the model loaded after this request: seconds as a number "
    "(`0` unloads at once, a negative number keeps it loaded forever) or a duration such as "
    "`5m` or `1h30m`. Unset: Ollama's default (`OLLAMA_KEEP_ALIVE`, 5 minutes)."
)


class GenerationOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The optional generation parameters of one request, already validated."""

    system_prompt: str | None = None
    keep_alive: float | str | UnsetType = UNSET
    num_ctx: int | None = None
    """The context window the caller asked for (bounded for user keys once the model is known)."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    session: str | None = None
    format: str | UnsetType = UNSET
    think: bool | UnsetType = UNSET

    def within(self, tokens: int | None) -> GenerationOptions:
        """These options with the answer capped at ``tokens`` (what the caller's quota has left; ``None``:
        no quota): Ollama's ``num_predict`` no higher, and never unbounded (-1, -2)."""
        if tokens is None:
            return self
        asked = self.options.get("num_predict")
        if isinstance(asked, int) and 0 < asked <= tokens:
            return self
        return msgspec.structs.replace(self, options={**self.options, "num_predict": tokens})

    def chat_request(
        self,
        model: str,
        message: str,
        images: list[str],
        session_system_prompt: str | None = None,
        history: list[WireMessage] | None = None,
    ) -> ChatRequest:
        """Build the Ollama chat request: system prompt, the session's history, the new message.

        A ``system_prompt`` given with the request wins over the session's, for this request only.
        """
        messages = []
        system_prompt = self.system_prompt or session_system_prompt
        if system_prompt:
            messages.append(WireMessage(role="system", content=system_prompt))
        messages.extend(history or ())
        messages.append(WireMessage(role="user", content=message, images=images))
        return ChatRequest(
            model=model,
            messages=messages,
            stream=False,
            options=self.options or UNSET,
            keep_alive=self.keep_alive,
            format=self.format,
            think=self.think,
        )


def generation_options(
    policy: Policy,
    caller: Caller,
    source: str,
    *,
    session: str | None,
    system_prompt: str | None,
    keep_alive: str | None,
    format: str | None,
    think: bool | None,
    given: dict[str, Any],
) -> GenerationOptions:
    """The checks and defaults every generation shares, whether its parameters came in the query or a body."""
    settings = policy.settings
    if system_prompt is not None:
        check_text_length("system_prompt", system_prompt, settings, source)
    if session is not None:
        validate_session_id(session, source)
    stop = given.get("stop")
    if stop is not None:
        try:
            check_stop(stop)
        except ValueError as exc:
            raise InvalidInputError.single(source, "stop", str(exc)) from None
    # Operator defaults first, then what the caller set: a request's value wins.
    options = {OPTIONS[name].ollama_name: value for name, value in settings.default_options.items()}
    options.update({OPTIONS[name].ollama_name: value for name, value in given.items() if value is not None})
    alive = resolve_keep_alive(keep_alive, settings, source)
    if keep_alive is not None:
        policy.check_keep_alive(caller, alive)
    return GenerationOptions(
        system_prompt=system_prompt,
        keep_alive=alive,
        num_ctx=given.get("num_ctx"),
        options=options,
        session=session,
        format=format if format is not None else UNSET,
        think=think if think is not None else UNSET,
    )


def _documented_bounds(spec: OptionSpec) -> dict[str, float] | None:
    """The bounds, once more for the OpenAPI document: Litestar copies a msgspec field's bounds into it
    only when they are truthy, so a bound of 0 (``temperature``, ``top_p``, ...) would be enforced but
    not documented; and the most ``stop`` values, which :func:`check_stop` enforces."""
    bounds = {key: value for key, value in (("minimum", spec.ge), ("maximum", spec.le)) if value is not None}
    if spec.kind is list:
        bounds["maxItems"] = MAX_STOP_SEQUENCES
    return bounds or None


def _meta(name: str) -> msgspec.Meta:
    spec = OPTIONS[name]
    bounds = _documented_bounds(spec)
    if bounds is None:
        return msgspec.Meta(description=spec.description)
    # Litestar documents a msgspec field's ``extra_json_schema["extra"]`` as is.
    extra = {"description": spec.description, "extra": bounds}
    return msgspec.Meta(ge=spec.ge, le=spec.le, description=spec.description, extra_json_schema=extra)


class GenerationFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The optional parameters of every generation, by the same names in a query string and in a JSON body.

    Their bounds and words are the server's only description of them: the checks (one msgspec
    conversion per request) and the OpenAPI document (:func:`query_parameters`) both come from here.
    """

    #: The fields a route needs although the Struct leaves them optional (checked by the route itself,
    #: in its own words), for the OpenAPI document.
    required: ClassVar[frozenset[str]] = frozenset()

    session: (
        Annotated[
            str,
            msgspec.Meta(
                description=(
                    "Conversation id of your choosing (1-128 letters, digits, `_-.:`). Ollama then gets the "
                    "session's system prompt and history, and the completed exchange is added to it."
                )
            ),
        ]
        | None
    ) = None
    system_prompt: (
        Annotated[
            str, msgspec.Meta(min_length=1, description="System prompt for this request only (wins over a session's).")
        ]
        | None
    ) = None
    keep_alive: Annotated[str | float, msgspec.Meta(description=KEEP_ALIVE_DESCRIPTION)] | None = None
    format: (
        Annotated[Literal["json"], msgspec.Meta(description="`json`: make the model answer with a JSON value.")] | None
    ) = None
    think: (
        Annotated[
            bool,
            msgspec.Meta(
                description=(
                    "For thinking models: think before answering (true) or not (false). Plain-text streams carry "
                    "only the answer; SSE and NDJSON streams carry the thinking as separate `thinking` events."
                )
            ),
        ]
        | None
    ) = None
    numa: Annotated[bool, _meta("numa")] | None = None
    num_ctx: Annotated[int, _meta("num_ctx")] | None = None
    num_keep: Annotated[int, _meta("num_keep")] | None = None
    num_batch: Annotated[int, _meta("num_batch")] | None = None
    low_vram: Annotated[bool, _meta("low_vram")] | None = None
    seed: Annotated[int, _meta("seed")] | None = None
    temperature: Annotated[float, _meta("temperature")] | None = None
    max_new_tokens: Annotated[int, _meta("max_new_tokens")] | None = None
    top_p: Annotated[float, _meta("top_p")] | None = None
    top_k: Annotated[int, _meta("top_k")] | None = None
    min_p: Annotated[float, _meta("min_p")] | None = None
    repeat_penalty: Annotated[float, _meta("repeat_penalty")] | None = None
    presence_penalty: Annotated[float, _meta("presence_penalty")] | None = None
    frequency_penalty: Annotated[float, _meta("frequency_penalty")] | None = None
    stop: Annotated[list[str], _meta("stop")] | None = None

    def options(self, policy: Policy, caller: Caller, source: str) -> GenerationOptions:
        """The validated generation options these fields ask for (errors name ``source`` fields)."""
        keep_alive = self.keep_alive
        return generation_options(
            policy,
            caller,
            source,
            session=self.session,
            system_prompt=self.system_prompt,
            keep_alive=None if keep_alive is None else plain_seconds(keep_alive),
            format=self.format,
            think=self.think,
            given={name: getattr(self, name) for name in OPTIONS},
        )


MESSAGE_DESCRIPTION: Final = "The user's message (required, non-empty)."


class GenerationBody(GenerationFields, kw_only=True):
    """The JSON body of ``POST /{model}`` and ``POST /stream/{model}``: the query's parameters by the
    same names, plus ``images`` (base64, as Ollama takes them)."""

    message: Annotated[str, msgspec.Meta(min_length=1, description=MESSAGE_DESCRIPTION)]
    images: Annotated[
        list[str],
        msgspec.Meta(
            description=(
                "Base64 images for a vision model (a `data:image/...;base64,` prefix, line breaks and URL-safe "
                "base64 are accepted)."
            )
        ),
    ] = msgspec.field(default_factory=list)


class _QueryFields(GenerationFields, kw_only=True):
    """The parameters as a query string carries them: a number of seconds there is text too."""

    keep_alive: Annotated[str, msgspec.Meta(description=KEEP_ALIVE_DESCRIPTION)] | None = None


class GenerationQuery(_QueryFields, kw_only=True):
    """The query string of ``GET /{model}`` and ``GET /stream/{model}``."""

    required: ClassVar[frozenset[str]] = frozenset({"message"})

    message: Annotated[str, msgspec.Meta(min_length=1, description=MESSAGE_DESCRIPTION)] | None = None


class VisionQuery(_QueryFields, kw_only=True):
    """The query string of the vision routes: the message may come in the form instead, and image links."""

    message: (
        Annotated[
            str, msgspec.Meta(description="The question about the images (or send it as the `message` form field).")
        ]
        | None
    ) = None
    image_url: (
        Annotated[
            list[str],
            msgspec.Meta(
                description=(
                    "Link to an image Minato downloads and sends along (repeat for several; also accepted as "
                    "`image_url` form fields). `http`/`https` only, no credentials in the URL; hosts must resolve "
                    "to public addresses only (private, loopback, link-local and metadata addresses are refused "
                    "unless the host is in `MINATO_IMAGE_FETCH_ALLOW`); redirects are followed up to "
                    "`MINATO_IMAGE_FETCH_MAX_REDIRECTS`, each checked again; the download is bounded by "
                    "`MINATO_MAX_IMAGE_BYTES` and `MINATO_IMAGE_FETCH_TIMEOUT`. Counts toward `MINATO_MAX_IMAGES`."
                )
            ),
        ]
        | None
    ) = None


Q = TypeVar("Q", bound=GenerationFields)
#: Route ``opt`` key: the Struct a route reads its query into with :func:`parse_query` (which also tells
#: the repeated-parameter check its lists, and the OpenAPI document its parameters).
QUERY_OPT: Final = "query"


class _QueryShape(NamedTuple):
    """What parsing a query type needs to know of it, worked out once per type."""

    names: frozenset[str]
    lists: frozenset[str]
    known: str
    literals: dict[str, tuple[Any, ...]]


def _shape(query_type: type[GenerationFields]) -> _QueryShape:
    shape = _SHAPES.get(query_type)
    if shape is None:
        info = msgspec.inspect.type_info(query_type)
        if not isinstance(info, msgspec.inspect.StructType):
            raise TypeError(f"{query_type!r} is not a Struct")
        names, lists, literals = set(), set(), {}
        for field in info.fields:
            names.add(field.name)
            for kind in _branches(field.type):
                if isinstance(kind, msgspec.inspect.ListType):
                    lists.add(field.name)
                elif isinstance(kind, msgspec.inspect.LiteralType):
                    literals[field.name] = kind.values
        shape = _SHAPES[query_type] = _QueryShape(
            frozenset(names), frozenset(lists), ", ".join(sorted(names)), literals
        )
    return shape


_SHAPES: Final[dict[type[GenerationFields], _QueryShape]] = {}


def list_fields(query_type: type[GenerationFields]) -> frozenset[str]:
    """The fields of ``query_type`` that a query may repeat (its lists)."""
    return _shape(query_type).lists


def _branches(kind: msgspec.inspect.Type) -> list[msgspec.inspect.Type]:
    """The non-null types of a field (``int | None`` is ``int``; metadata is looked through)."""
    if isinstance(kind, msgspec.inspect.Metadata):
        return _branches(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return [branch for member in kind.types for branch in _branches(member)]
    return [] if isinstance(kind, msgspec.inspect.NoneType) else [kind]


def parse_query(request: Request[Any, Any, Any], query_type: type[Q]) -> Q:
    """The query string as ``query_type``: unknown names, wrong types and bounds are one 422 listing each.

    One conversion of the whole query, instead of a validated parameter per name: the generation
    routes take about 25 and most requests send two.
    """
    shape = _shape(query_type)
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in request.query_params.items():  # every occurrence, in the query's order
        if key in shape.lists:
            values.setdefault(key, []).append(value)
        elif key in shape.names:
            values[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise InvalidInputError(
            [
                ErrorItem(loc=["query", key], msg=unknown_name_sentence(key, shape.known), type="extra_forbidden")
                for key in unknown
            ]
        )
    try:
        return msgspec.convert(values, query_type, strict=False)
    except msgspec.ValidationError:
        raise _query_errors(values, query_type, shape) from None


def _query_errors(values: dict[str, Any], query_type: type[GenerationFields], shape: _QueryShape) -> InvalidInputError:
    """Every invalid parameter of a query that failed to convert, each in Minato's words (the slow path)."""
    items = []
    for key, value in values.items():
        try:
            msgspec.convert({key: value}, query_type, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc).rsplit(" - at `", 1)[0]
            sentence = validation_sentence(message, shape.literals.get(key, ()))
            items.append(ErrorItem(loc=["query", key], msg=sentence, type="value_error"))
    return InvalidInputError(items or [ErrorItem(loc=["query"], msg="is not valid", type="value_error")])


#: JSON Schema keywords msgspec writes for these fields, by the name Litestar's ``Schema`` gives them.
_SCHEMA_KEYWORDS: Final = {
    "description": "description",
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_items",
    "maxItems": "max_items",
    "enum": "enum",
}


def _openapi_schema(schema: dict[str, Any]) -> Schema:
    """msgspec's JSON Schema of one field as Litestar's OpenAPI ``Schema`` (an unknown keyword is an error,
    so a bound msgspec learns to write cannot go undocumented silently)."""
    values: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword == "type":
            values["type"] = OpenAPIType(value)
        elif keyword == "items":
            values["items"] = _openapi_schema(value)
        elif keyword == "extra":
            # What Litestar is told besides msgspec's own keywords (see _meta): the same bounds, and more.
            for name, bound in value.items():
                values[_SCHEMA_KEYWORDS[name]] = bound
        elif keyword == "anyOf":
            values["one_of"] = [_openapi_schema(branch) for branch in value]
        elif keyword in _SCHEMA_KEYWORDS:
            values[_SCHEMA_KEYWORDS[keyword]] = value
        else:
            raise ValueError(f"no OpenAPI translation for the JSON Schema keyword {keyword!r}")
    if "enum" in values and "type" not in values and all(isinstance(v, str) for v in values["enum"]):
        values["type"] = OpenAPIType.STRING  # msgspec writes a Literal's values only
    return Schema(**values)


def query_parameters(query_type: type[GenerationFields]) -> list[Parameter]:
    """The OpenAPI description of ``query_type`` as query parameters: the same bounds the conversion checks."""
    required = query_type.required
    document = msgspec.json.schema(query_type)
    properties: dict[str, dict[str, Any]] = document["$defs"][query_type.__name__]["properties"]
    parameters = []
    for name, prop in properties.items():
        branches = [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") != "null"]
        field = branches[0] if len(branches) == 1 else {"anyOf": branches}
        schema = _openapi_schema({key: value for key, value in field.items() if key != "default"})
        description, schema.description = schema.description, None
        parameters.append(
            Parameter(name=name, param_in="query", schema=schema, description=description, required=name in required)
        )
    return parameters


#: Every query parameter a text generation route understands.
GENERATION_QUERY_PARAMETERS: Final = frozenset(field.name for field in msgspec.structs.fields(GenerationQuery))


def resolve_keep_alive(value: str | None, settings: Settings, source: str = "query") -> float | str | UnsetType:
    """The ``keep_alive`` to send: the caller's (validated), else the operator's default, else none."""
    if value is None:
        return settings.default_keep_alive if settings.default_keep_alive is not None else UNSET
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidInputError.single(source, "keep_alive", str(exc)) from None


def check_text_length(name: str, value: str, settings: Settings, source: str = "query") -> None:
    """Reject empty or over-long text parameters."""
    if not value.strip():
        raise InvalidInputError.single(source, name, "must not be empty", "missing")
    if len(value) > settings.max_message_chars:
        raise InvalidInputError.single(
            source,
            name,
            f"is longer than {settings.max_message_chars} characters",
            "string_too_long",
        )


def validate_model_name(raw: str) -> str:
    """Return the model name of a ``{model:path}`` route parameter, or raise a 422."""
    name = raw.lstrip("/")
    if not name:
        raise InvalidInputError.single("path", "model_name", "a model name is required", "missing")
    if len(name) > MAX_MODEL_NAME or not _MODEL_NAME.fullmatch(name):
        raise InvalidInputError.single(
            "path",
            "model_name",
            "is not a valid Ollama model name ([host/][namespace/]name[:tag], e.g. llama3.2:1b)",
        )
    return name
