"""Generation parameters: query string in, Ollama request out.

Only parameters the caller set are forwarded, so Ollama's and the model's own defaults apply to
everything else. ``keep_alive`` and the system prompt are top-level Ollama fields; the rest go into
Ollama's ``options``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final

import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import Parameter
from msgspec import UNSET, UnsetType

from minato.errors import ErrorItem, InvalidInputError
from minato.sessions import Turn, validate_session_id
from minato.settings import Settings
from minato.upstream.wire import ChatRequest, WireMessage

INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
#: A Go ``time.ParseDuration`` string (what Ollama accepts for a text ``keep_alive``).
_GO_DURATION: Final = re.compile(r"-?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
#: Ollama model references: ``[host/][namespace/]name[:tag]``.
_MODEL_NAME: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*(?::[A-Za-z0-9_][A-Za-z0-9._-]*)?"
)
MAX_MODEL_NAME: Final = 350
_IGNORED_BY_OLLAMA: Final = (
    "Accepted and forwarded for compatibility, but current Ollama ignores it "
    "(removed from Ollama's API in {version}; Ollama {what})."
)

KEEP_ALIVE_DESCRIPTION: Final = (
    "How long Ollama keeps the model loaded after this request: seconds as a number "
    "(`0` unloads at once, a negative number keeps it loaded forever) or a duration such as "
    "`5m` or `1h30m`. Unset: Ollama's default (`OLLAMA_KEEP_ALIVE`, 5 minutes)."
)


class GenerationOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The optional generation parameters of one request, already validated."""

    system_prompt: str | None = None
    keep_alive: float | str | UnsetType = UNSET
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    session: str | None = None

    def chat_request(
        self, model: str, message: str, images: list[str] | None = None, turn: Turn | None = None
    ) -> ChatRequest:
        """Build the Ollama chat request: system prompt, the session's history, the new message.

        A ``system_prompt`` given with the request wins over the session's, for this request only.
        """
        messages = []
        system_prompt = self.system_prompt or (turn.system_prompt if turn else None)
        if system_prompt:
            messages.append(WireMessage(role="system", content=system_prompt))
        if turn is not None:
            messages.extend(turn.history())
        messages.append(WireMessage(role="user", content=message, images=images or []))
        return ChatRequest(
            model=model,
            messages=messages,
            stream=False,
            options=self.options or UNSET,
            keep_alive=self.keep_alive,
        )


def provide_generation_options(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
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
    numa: Annotated[
        bool | None,
        Parameter(description=_IGNORED_BY_OLLAMA.format(version="v0.3.4", what="detects NUMA itself")),
    ] = None,
    num_ctx: Annotated[
        int | None,
        Parameter(
            description="Context window in tokens (changing it reloads the model).",
            ge=1,
            le=INT32_MAX,
        ),
    ] = None,
    num_keep: Annotated[
        int | None,
        Parameter(
            description="Tokens of the prompt kept when the context fills up (-1: all).",
            ge=-1,
            le=INT32_MAX,
        ),
    ] = None,
    num_batch: Annotated[
        int | None,
        Parameter(
            description="Prompt-processing batch size (changing it reloads the model).",
            ge=1,
            le=INT32_MAX,
        ),
    ] = None,
    low_vram: Annotated[
        bool | None,
        Parameter(description=_IGNORED_BY_OLLAMA.format(version="v0.6.9", what="manages memory itself")),
    ] = None,
    seed: Annotated[
        int | None,
        Parameter(
            description="Random seed; the same seed and prompt give the same answer.",
            ge=-INT64_MAX,
            le=INT64_MAX,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        Parameter(
            description="Sampling temperature (0 = deterministic; higher = more varied).",
            ge=0,
            le=100,
        ),
    ] = None,
) -> GenerationOptions:
    """Validate the optional generation parameters shared by every generation route."""
    unknown = [key for key in request.query_params if key not in GENERATION_QUERY_PARAMETERS]
    if unknown:
        known = ", ".join(sorted(GENERATION_QUERY_PARAMETERS))
        raise InvalidInputError(
            [
                ErrorItem(
                    loc=["query", key],
                    msg=f"unknown parameter (known: {known})",
                    type="extra_forbidden",
                )
                for key in unknown
            ]
        )
    if system_prompt is not None:
        check_text_length("system_prompt", system_prompt, settings)
    if session is not None:
        validate_session_id(session, "query")
    options: dict[str, Any] = {}
    for name, value in (
        ("numa", numa),
        ("num_ctx", num_ctx),
        ("num_keep", num_keep),
        ("num_batch", num_batch),
        ("low_vram", low_vram),
        ("seed", seed),
        ("temperature", temperature),
    ):
        if value is not None:
            options[name] = value
    return GenerationOptions(
        system_prompt=system_prompt,
        keep_alive=UNSET if keep_alive is None else parse_keep_alive(keep_alive),
        options=options,
        session=session,
    )


#: Every query parameter a generation route understands.
GENERATION_QUERY_PARAMETERS: Final = frozenset(
    {"message"}
    | set(provide_generation_options.__code__.co_varnames[: provide_generation_options.__code__.co_argcount])
    - {"request", "settings"}
)


def parse_keep_alive(value: str) -> float | str:
    """Return ``keep_alive`` as Ollama accepts it: seconds as a number, or a Go duration string.

    A number-looking string must travel as a JSON number: Ollama rejects ``"300"`` with
    "missing unit in duration".
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        if _GO_DURATION.fullmatch(text):
            return text
        raise InvalidInputError.single(
            "query",
            "keep_alive",
            "must be a number of seconds (negative: forever) or a duration such as 5m or 1h30m",
        ) from None
    if not math.isfinite(seconds) or abs(seconds) > 9e9:
        raise InvalidInputError.single("query", "keep_alive", "must be a finite number of seconds")
    if seconds < 0:
        return -1
    return int(seconds) if seconds.is_integer() else seconds


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
