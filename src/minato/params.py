"""The generation routes' query parameters (HTTP side): query string in, validated options out.

Only parameters the caller set are forwarded, so Ollama's and the model's own defaults apply to
everything else. ``keep_alive`` and the system prompt are top-level Ollama fields; the rest go into
Ollama's ``options``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import Parameter
from msgspec import UNSET, UnsetType

from minato.errors import ErrorItem, ForbiddenError, InvalidInputError
from minato.security import Caller
from minato.sessions import validate_session_id
from minato.settings import Settings
from minato.upstream.options import (
    MAX_STOP_SEQUENCES,
    OPTIONS,
    OptionSpec,
    check_stop,
    keep_alive_seconds,
    parse_keep_alive,
)
from minato.upstream.wire import ChatRequest, WireMessage

#: Ollama model references: ``[host/][namespace/]name[:tag]``.
_MODEL_NAME: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?::\d{1,5}(?=/))?"  # first segment: a name, or a registry host with its port
    r"(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]*)?"
)
MAX_MODEL_NAME: Final = 350
#: Route ``opt`` key naming the query parameters a route takes beyond the generation parameters.
EXTRA_QUERY_OPT: Final = "extra_query"

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


def _option(name: str) -> Any:
    spec = OPTIONS[name]
    return Parameter(description=spec.description, ge=spec.ge, le=spec.le, schema_extra=_documented_bounds(spec))


def _documented_bounds(spec: OptionSpec) -> dict[str, float] | None:
    """The bounds, once more for the OpenAPI document: Litestar copies ``ge``/``le`` into it only when
    they are truthy, so a bound of 0 (``temperature``, ``top_p``, ...) is enforced but not documented;
    and the most ``stop`` values, which :func:`check_stop` enforces."""
    bounds = {key: value for key, value in (("minimum", spec.ge), ("maximum", spec.le)) if value is not None}
    if spec.kind is list:
        bounds["maxItems"] = MAX_STOP_SEQUENCES
    return bounds or None


def provide_generation_options(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
    caller: NamedDependency[Caller],
    session: Annotated[
        str | None,
        Parameter(
            description=(
                "Conversation id of your choosing (1-128 letters, digits, `_-.:`). Ollama then gets the "
                "session's system prompt and history, and the completed exchange is added to it."
            )
        ),
    ] = None,
    system_prompt: Annotated[
        str | None,
        Parameter(description="System prompt for this request only (wins over a session's).", min_length=1),
    ] = None,
    keep_alive: Annotated[str | None, Parameter(description=KEEP_ALIVE_DESCRIPTION)] = None,
    format: Annotated[
        Literal["json"] | None, Parameter(description="`json`: make the model answer with a JSON value.")
    ] = None,
    think: Annotated[
        bool | None,
        Parameter(
            description=(
                "For thinking models: think before answering (true) or not (false). Plain-text streams carry "
                "only the answer; SSE and NDJSON streams carry the thinking as separate `thinking` events."
            )
        ),
    ] = None,
    numa: Annotated[bool | None, _option("numa")] = None,
    num_ctx: Annotated[int | None, _option("num_ctx")] = None,
    num_keep: Annotated[int | None, _option("num_keep")] = None,
    num_batch: Annotated[int | None, _option("num_batch")] = None,
    low_vram: Annotated[bool | None, _option("low_vram")] = None,
    seed: Annotated[int | None, _option("seed")] = None,
    temperature: Annotated[float | None, _option("temperature")] = None,
    max_new_tokens: Annotated[int | None, _option("max_new_tokens")] = None,
    top_p: Annotated[float | None, _option("top_p")] = None,
    top_k: Annotated[int | None, _option("top_k")] = None,
    min_p: Annotated[float | None, _option("min_p")] = None,
    repeat_penalty: Annotated[float | None, _option("repeat_penalty")] = None,
    presence_penalty: Annotated[float | None, _option("presence_penalty")] = None,
    frequency_penalty: Annotated[float | None, _option("frequency_penalty")] = None,
    stop: Annotated[list[str] | None, _option("stop")] = None,
) -> GenerationOptions:
    """Validate the optional generation parameters shared by every generation route."""
    extra = request.route_handler.opt.get(EXTRA_QUERY_OPT, frozenset())
    unknown = [key for key in request.query_params if key not in GENERATION_QUERY_PARAMETERS and key not in extra]
    if unknown:
        known = ", ".join(sorted(GENERATION_QUERY_PARAMETERS))
        raise InvalidInputError(
            [
                ErrorItem(loc=["query", key], msg=f"unknown parameter (known: {known})", type="extra_forbidden")
                for key in unknown
            ]
        )
    given = {
        "numa": numa,
        "num_ctx": num_ctx,
        "num_keep": num_keep,
        "num_batch": num_batch,
        "low_vram": low_vram,
        "seed": seed,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repeat_penalty": repeat_penalty,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "stop": stop,
    }
    return generation_options(
        settings,
        caller,
        "query",
        session=session,
        system_prompt=system_prompt,
        keep_alive=keep_alive,
        format=format,
        think=think,
        given=given,
    )


def generation_options(
    settings: Settings,
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
    if keep_alive is not None and not caller.is_admin:
        check_user_keep_alive(alive, settings)
    return GenerationOptions(
        system_prompt=system_prompt,
        keep_alive=alive,
        num_ctx=given.get("num_ctx"),
        options=options,
        session=session,
        format=format if format is not None else UNSET,
        think=think if think is not None else UNSET,
    )


def _meta(name: str) -> msgspec.Meta:
    spec = OPTIONS[name]
    bounds = _documented_bounds(spec)
    if bounds is None:
        return msgspec.Meta(description=spec.description)
    # Litestar documents a msgspec field's ``extra_json_schema["extra"]`` as is (and its bounds only when truthy).
    extra = {"description": spec.description, "extra": bounds}
    return msgspec.Meta(ge=spec.ge, le=spec.le, description=spec.description, extra_json_schema=extra)


class GenerationBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The JSON body of ``POST /{model}`` and ``POST /stream/{model}``: the query's parameters by the
    same names, plus ``images`` (base64, as Ollama takes them)."""

    message: Annotated[str, msgspec.Meta(min_length=1, description="The user's message (required, non-empty).")]
    images: list[str] = msgspec.field(default_factory=list)
    """Base64 images (a ``data:image/...;base64,`` prefix, line breaks and URL-safe base64 are accepted)."""
    session: str | None = None
    system_prompt: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    keep_alive: str | float | None = None
    format: Literal["json"] | None = None
    think: bool | None = None
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

    def options(self, settings: Settings, caller: Caller) -> GenerationOptions:
        """The validated generation options this body asks for (errors name ``body`` fields)."""
        keep_alive = self.keep_alive
        return generation_options(
            settings,
            caller,
            "body",
            session=self.session,
            system_prompt=self.system_prompt,
            keep_alive=None if keep_alive is None else _number_text(keep_alive),
            format=self.format,
            think=self.think,
            given={name: getattr(self, name) for name in OPTIONS},
        )


def _number_text(value: str | float) -> str:
    """A JSON ``keep_alive`` as the query would carry it (``300``, ``-1``, ``"5m"``)."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


#: The query parameters of a generation that are not Ollama options (those are Ollama's table).
REQUEST_PARAMETERS: Final = frozenset({"message", "session", "system_prompt", "keep_alive", "format", "think"})
#: Every query parameter a generation route understands.
GENERATION_QUERY_PARAMETERS: Final = REQUEST_PARAMETERS | frozenset(OPTIONS)


def resolve_keep_alive(value: str | None, settings: Settings, source: str = "query") -> float | str | UnsetType:
    """The ``keep_alive`` to send: the caller's (validated), else the operator's default, else none."""
    if value is None:
        return settings.default_keep_alive if settings.default_keep_alive is not None else UNSET
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidInputError.single(source, "keep_alive", str(exc)) from None


def check_user_keep_alive(value: float | str | UnsetType, settings: Settings) -> None:
    """Refuse a user key's ``keep_alive`` outside 1 s to ``MINATO_USER_MAX_KEEP_ALIVE``.

    ``0`` would unload a model others are using and a negative value would pin it forever: both
    decide for everyone who shares the GPU, so they are an operator's (an admin key's) to make.
    """
    if isinstance(value, UnsetType):
        return
    seconds = keep_alive_seconds(value)
    limit = settings.user_max_keep_alive
    if seconds == 0:
        reason = "0 unloads the model for everyone using it"
    elif seconds < 0:
        reason = "a negative value keeps the model loaded forever"
    elif seconds < 1:
        reason = "less than 1 s unloads the model for everyone using it"
    elif seconds > keep_alive_seconds(limit):
        reason = f"it is longer than {limit} (MINATO_USER_MAX_KEEP_ALIVE)"
    else:
        return
    raise ForbiddenError(f"keep_alive={value}: {reason}; this needs an admin key (user keys: 1 s to {limit})")


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
