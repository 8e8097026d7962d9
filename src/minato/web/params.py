"""The generation routes' parameters as a request carries them: the query-string and JSON-body Structs,
and the route's model name.

Each Struct turns into the use case's validated :class:`~minato.core.options.GenerationOptions`;
:mod:`minato.web.query` reads a query string into one of them.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from minato.auth.caller import Caller
from minato.core.options import GenerationOptions, generation_options
from minato.core.policy import Policy, plain_seconds
from minato.errors import InvalidInputError
from minato.ollama.options import (
    OPTIONS,
)
from minato.web.openapi_msgspec import option_meta

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


class GenerationFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The optional parameters of every generation, by the same names in a query string and in a JSON body.

    Their bounds and words are the server's only description of them: the checks (one msgspec
    conversion per request) and the OpenAPI document
    (:func:`minato.web.openapi_msgspec.query_parameters`) both come from here.
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
    numa: Annotated[bool, option_meta("numa")] | None = None
    num_ctx: Annotated[int, option_meta("num_ctx")] | None = None
    num_keep: Annotated[int, option_meta("num_keep")] | None = None
    num_batch: Annotated[int, option_meta("num_batch")] | None = None
    low_vram: Annotated[bool, option_meta("low_vram")] | None = None
    seed: Annotated[int, option_meta("seed")] | None = None
    temperature: Annotated[float, option_meta("temperature")] | None = None
    max_new_tokens: Annotated[int, option_meta("max_new_tokens")] | None = None
    top_p: Annotated[float, option_meta("top_p")] | None = None
    top_k: Annotated[int, option_meta("top_k")] | None = None
    min_p: Annotated[float, option_meta("min_p")] | None = None
    repeat_penalty: Annotated[float, option_meta("repeat_penalty")] | None = None
    presence_penalty: Annotated[float, option_meta("presence_penalty")] | None = None
    frequency_penalty: Annotated[float, option_meta("frequency_penalty")] | None = None
    stop: Annotated[list[str], option_meta("stop")] | None = None

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


#: Every query parameter a text generation route understands.
GENERATION_QUERY_PARAMETERS: Final = frozenset(field.name for field in msgspec.structs.fields(GenerationQuery))


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
