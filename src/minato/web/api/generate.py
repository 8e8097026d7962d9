"""Text generation: ``GET /{model}`` (whole answer) and ``GET /stream/{model}`` (streamed), and the same
by ``POST`` with the parameters in a JSON body (no URL length limit on the prompt, and images)."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any, Final

from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Stream

from minato.core.generation import Generation, Question, streamed_answer, whole_answer
from minato.core.images import decode_base64_image, too_many_images
from minato.core.options import check_text_length
from minato.core.schemas import GenerateResponse
from minato.errors import InvalidInputError
from minato.observability.record import record_of
from minato.web.api.common import (
    GENERATION_OPT,
    GENERATION_RESPONSES,
    RECONNECTABLE_OPT,
    ModelName,
    generation_parts,
    require_vision,
)
from minato.web.params import GenerationBody, GenerationQuery
from minato.web.query import QUERY_OPT, parse_query
from minato.web.streaming import answer_response

STREAM_DESCRIPTION: Final = (
    "Chunked `text/plain` tokens, written as Ollama yields them. With `Accept: text/event-stream`: "
    "SSE `token` events then a `done` event with stats (or an `error` event). With "
    '`Accept: application/x-ndjson`: one `{"token": ...}` line per token, then a line with stats. '
    "With `think=true` on a thinking model, SSE and NDJSON also carry `thinking` events; plain text "
    "carries only the answer."
)
#: The text routes: one tag, the same documented failures, and a POST that answers 200 (not 201).
_get = partial(
    get,
    responses=GENERATION_RESPONSES,
    tags=["generate"],
)
_post = partial(post, status_code=200, responses=GENERATION_RESPONSES, tags=["generate"])


async def relayed(request: Request[Any, Any, Any], generation: Generation) -> Stream:
    """A streamed generation, primed, as the response relaying it in the format the client accepts."""
    return answer_response(await streamed_answer(generation), request.headers.get("accept"), record_of(request.scope))


def text_generation(request: Request[Any, Any, Any], model_name: str) -> Generation:
    """The generation both text routes run: the parts gathered, the query read in one conversion."""
    parts = generation_parts(request, model_name)
    query = parse_query(request, GenerationQuery)
    if query.message is None:
        raise InvalidInputError.single("query", "message", "field required", "missing")
    check_text_length("message", query.message, parts.settings)
    return Generation(parts, query.options(parts.policy, parts.caller, "query"), Question(query.message, []))


@_get(
    "/{model_name:path}",
    operation_id="Generate",
    summary="Answer a message",
    description="Send `message` to the model and wait for the whole answer.",
    opt={GENERATION_OPT: True, QUERY_OPT: GenerationQuery},
)
async def generate(request: Request[Any, Any, Any], model_name: ModelName) -> GenerateResponse:
    """Return the model's whole answer with Ollama's stats."""
    return await whole_answer(text_generation(request, model_name))


@_get(
    "/stream/{model_name:path}",
    operation_id="GenerateStream",
    summary="Stream the answer to a message",
    description=STREAM_DESCRIPTION,
    opt={GENERATION_OPT: True, RECONNECTABLE_OPT: True, QUERY_OPT: GenerationQuery},
)
async def generate_stream(request: Request[Any, Any, Any], model_name: ModelName) -> Stream:
    """Relay the answer token by token; the status is decided before the first token is sent."""
    return await relayed(request, text_generation(request, model_name))


POST_DESCRIPTION: Final = (
    "The parameters of the GET route by the same names in a JSON body (`message` required), plus "
    "`images`: base64 images for a vision model. Validation errors name `body` fields."
)


async def posted_generation(request: Request[Any, Any, Any], model_name: str, data: GenerationBody) -> Generation:
    """The generation both POST routes run: the body checked, its images decoded."""
    parts = generation_parts(request, model_name)
    upstream, settings, caller, model = parts.upstream, parts.settings, parts.caller, parts.model
    if request.query_params:
        name = next(iter(request.query_params))
        raise InvalidInputError.single("query", name, "send the parameters in the JSON body", "extra_forbidden")
    check_text_length("message", data.message, settings, source="body")
    params = data.options(parts.policy, caller, "body")
    if len(data.images) > settings.max_images:
        raise too_many_images("body", "images", settings)
    if data.images:
        require_vision(model, await upstream.capabilities(model))
    images = [
        base64.b64encode(decode_base64_image(text, index, settings, "images")).decode("ascii")
        for index, text in enumerate(data.images)
    ]
    return Generation(parts, params, Question(data.message, images))


@_post(
    "/{model_name:path}",
    operation_id="GeneratePost",
    summary="Answer a message sent as JSON",
    description=f"Like `GET /{{model}}`. {POST_DESCRIPTION}",
    opt={GENERATION_OPT: True},
)
async def generate_post(
    request: Request[Any, Any, Any], model_name: ModelName, data: JSONBody[GenerationBody]
) -> GenerateResponse:
    """Return the model's whole answer with Ollama's stats."""
    return await whole_answer(await posted_generation(request, model_name, data))


@_post(
    "/stream/{model_name:path}",
    operation_id="GenerateStreamPost",
    summary="Stream the answer to a message sent as JSON",
    description=f"Like `GET /stream/{{model}}`. {POST_DESCRIPTION}\n\n{STREAM_DESCRIPTION}",
    opt={GENERATION_OPT: True},
)
async def generate_stream_post(
    request: Request[Any, Any, Any], model_name: ModelName, data: JSONBody[GenerationBody]
) -> Stream:
    """Relay the answer token by token; the status is decided before the first token is sent."""
    return await relayed(request, await posted_generation(request, model_name, data))
