"""Text generation: ``GET /{model}`` (whole answer) and ``GET /stream/{model}`` (streamed), and the same
by ``POST`` with the parameters in a JSON body (no URL length limit on the prompt, and images)."""

from __future__ import annotations

import base64
from functools import partial
from typing import Annotated, Final

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, SkipValidation
from litestar.response import Stream

from minato.errors import InvalidInputError
from minato.generation import Generation, GenerationParts, Question, streamed_answer, whole_answer
from minato.handlers.common import GENERATION_OPT, GENERATION_RESPONSES, RECONNECTABLE_OPT, require_vision
from minato.images import decode_base64_image, too_many_images
from minato.params import GenerationBody, GenerationOptions, check_text_length
from minato.schemas import GenerateResponse

MESSAGE_DESCRIPTION: Final = "The user's message (required, non-empty)."
Message = Annotated[str, Parameter(description=MESSAGE_DESCRIPTION, min_length=1)]
STREAM_DESCRIPTION: Final = (
    "Chunked `text/plain` tokens, written as Ollama yields them. With `Accept: text/event-stream`: "
    "SSE `token` events then a `done` event with stats (or an `error` event). With "
    '`Accept: application/x-ndjson`: one `{"token": ...}` line per token, then a line with stats. '
    "With `think=true` on a thinking model, SSE and NDJSON also carry `thinking` events; plain text "
    "carries only the answer."
)
#: The text routes: one tag, the same documented failures, and a POST that answers 200 (not 201).
_get = partial(get, responses=GENERATION_RESPONSES, tags=["generate"])
_post = partial(post, status_code=200, responses=GENERATION_RESPONSES, tags=["generate"])


def provide_text_generation(
    generation_parts: NamedDependency[GenerationParts], message: Message, params: NamedDependency[GenerationOptions]
) -> Generation:
    """The ``text_generation`` dependency of both text routes: the message checked, the parts gathered."""
    check_text_length("message", message, generation_parts.settings)
    return Generation(generation_parts, params, Question(message, []))


@_get(
    "/{model_name:path}",
    operation_id="Generate",
    summary="Answer a message",
    description="Send `message` to the model and wait for the whole answer.",
    opt={GENERATION_OPT: True},
)
async def generate(text_generation: NamedDependency[SkipValidation[Generation]]) -> GenerateResponse:
    """Return the model's whole answer with Ollama's stats."""
    return await whole_answer(text_generation)


@_get(
    "/stream/{model_name:path}",
    operation_id="GenerateStream",
    summary="Stream the answer to a message",
    description=STREAM_DESCRIPTION,
    opt={GENERATION_OPT: True, RECONNECTABLE_OPT: True},
)
async def generate_stream(text_generation: NamedDependency[SkipValidation[Generation]]) -> Stream:
    """Relay the answer token by token; the status is decided before the first token is sent."""
    return await streamed_answer(text_generation)


POST_DESCRIPTION: Final = (
    "The parameters of the GET route by the same names in a JSON body (`message` required), plus "
    "`images`: base64 images for a vision model. Validation errors name `body` fields."
)


async def provide_posted_generation(
    generation_parts: NamedDependency[GenerationParts], data: JSONBody[GenerationBody]
) -> Generation:
    """The ``posted_generation`` dependency of both POST routes: the body checked, its images decoded."""
    request, upstream, _, _, settings, caller, model = generation_parts
    if request.query_params:
        name = next(iter(request.query_params))
        raise InvalidInputError.single("query", name, "send the parameters in the JSON body", "extra_forbidden")
    check_text_length("message", data.message, settings, source="body")
    params = data.options(settings, caller)
    if len(data.images) > settings.max_images:
        raise too_many_images("body", "images", settings)
    if data.images:
        require_vision(model, await upstream.capabilities(model))
    images = [
        base64.b64encode(decode_base64_image(text, index, settings, "images")).decode("ascii")
        for index, text in enumerate(data.images)
    ]
    return Generation(generation_parts, params, Question(data.message, images))


@_post(
    "/{model_name:path}",
    operation_id="GeneratePost",
    summary="Answer a message sent as JSON",
    description=f"Like `GET /{{model}}`. {POST_DESCRIPTION}",
    opt={GENERATION_OPT: True},
)
async def generate_post(posted_generation: NamedDependency[SkipValidation[Generation]]) -> GenerateResponse:
    """Return the model's whole answer with Ollama's stats."""
    return await whole_answer(posted_generation)


@_post(
    "/stream/{model_name:path}",
    operation_id="GenerateStreamPost",
    summary="Stream the answer to a message sent as JSON",
    description=f"Like `GET /stream/{{model}}`. {POST_DESCRIPTION}\n\n{STREAM_DESCRIPTION}",
    opt={GENERATION_OPT: True},
)
async def generate_stream_post(posted_generation: NamedDependency[SkipValidation[Generation]]) -> Stream:
    """Relay the answer token by token; the status is decided before the first token is sent."""
    return await streamed_answer(posted_generation)
