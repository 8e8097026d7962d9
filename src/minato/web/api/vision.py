"""Image questions: ``POST /vision/{model}`` and ``POST /stream/vision/{model}``.

Images come as multipart file parts, as base64 form fields or as links Minato fetches; Ollama gets
them in that order.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Final

from litestar import Request, post
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.response import Stream

from minato.core.fetch import ImageFetcher
from minato.core.generation import Generation, Question, whole_answer
from minato.core.images import BASE64_FIELD, IMAGE_FIELD, URL_FIELD, check_link, read_vision_form, too_many_images
from minato.core.options import check_text_length
from minato.core.schemas import GenerateResponse
from minato.errors import ClientDisconnectedError, InvalidInputError, PayloadTooLargeError
from minato.settings import Settings
from minato.web.api.common import (
    GENERATION_OPT,
    GENERATION_RESPONSES,
    REQUEST_BODY_OPT,
    ModelName,
    generation_parts,
    require_vision,
)
from minato.web.api.generate import STREAM_DESCRIPTION, relayed
from minato.web.params import VisionQuery
from minato.web.query import QUERY_OPT, parse_query
from minato.web.rendering import error_spec
from minato.web.runtime import runtime_of

VISION_DESCRIPTION: Final = (
    "Images (PNG, JPEG, WebP, GIF or BMP, recognised by content) in any mix of: `images` file parts "
    "of a `multipart/form-data` body; `image_base64` form fields (a `data:image/...;base64,` prefix, "
    "line breaks, the URL-safe alphabet and missing padding are accepted); `image_url` links, in the "
    "query string or as form fields, which Minato downloads itself (public addresses only). With only "
    "query-string links the body can be left out. Ollama receives the files first, then the base64 "
    "fields, then the links, each group in request order. The question is `message`, either in the "
    "query string or as a form field. The model must have Ollama's `vision` capability."
)
VISION_RESPONSES: Final = {
    **GENERATION_RESPONSES,
    400: error_spec("The model has no `vision` capability, or Ollama refused the request."),
    413: error_spec("An image (uploaded, base64 or downloaded) or the whole body is larger than the configured limit."),
}
#: The form both vision routes read themselves, once the generation holds its slot (so Litestar never
#: parses it): documented here. Optional, because query-string links need no body.
VISION_FORM: Final = RequestBody(
    required=False,
    description="The images and, unless it is in the query string, the message. Every part may repeat.",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={
                    IMAGE_FIELD: Schema(
                        type=OpenAPIType.ARRAY,
                        items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                        description="Image files (PNG, JPEG, WebP, GIF or BMP, recognised by content).",
                    ),
                    BASE64_FIELD: Schema(
                        type=OpenAPIType.ARRAY,
                        items=Schema(type=OpenAPIType.STRING),
                        description=(
                            "Base64 images (a `data:image/...;base64,` prefix, line breaks, the URL-safe alphabet "
                            "and missing padding are accepted)."
                        ),
                    ),
                    URL_FIELD: Schema(
                        type=OpenAPIType.ARRAY,
                        items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.URI),
                        description="Links Minato downloads (as the `image_url` query parameter).",
                    ),
                    "message": Schema(
                        type=OpenAPIType.STRING,
                        min_length=1,
                        description="The question about the images (or send it in the query string, not both).",
                    ),
                },
            )
        )
    },
)
#: Both vision routes: one tag, the same documented failures, the same query, and 200 (not 201).
_post = partial(
    post,
    status_code=200,
    responses=VISION_RESPONSES,
    tags=["vision"],
    opt={GENERATION_OPT: True, QUERY_OPT: VisionQuery, REQUEST_BODY_OPT: VISION_FORM},
)


async def _fetch_all(fetcher: ImageFetcher, links: list[tuple[str, str, int]]) -> list[str]:
    """Download every link at once; the first failure (in link order) cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(fetcher.fetch(url, index, source=source)) for url, source, index in links]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure
    return [base64.b64encode(task.result()).decode("ascii") for task in tasks]


async def body_chunks(request: Request[Any, Any, Any], settings: Settings) -> AsyncIterator[bytes]:
    """The request body as it arrives, bounded by ``MINATO_MAX_BODY_BYTES``.

    A client that disconnects half-way is a 499 (logged, never answered), not the server error
    Litestar's own body stream raises for it.
    """
    received = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("client disconnected while sending the body")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]  # a disconnect was ruled out above
        if chunk:
            received += len(chunk)
            if received > settings.max_body_bytes:
                raise PayloadTooLargeError(
                    f"the request body is larger than {settings.max_body_bytes} bytes (MINATO_MAX_BODY_BYTES)"
                )
            yield chunk
        if not message.get("more_body", False):
            return


async def vision_generation(request: Request[Any, Any, Any], model_name: str) -> Generation:
    """The generation both vision routes run: what needs no body is checked, and the body is left to be
    read once the generation holds its slot."""
    parts = generation_parts(request, model_name)
    upstream, settings, caller, model = parts.upstream, parts.settings, parts.caller, parts.model
    query = parse_query(request, VisionQuery)
    message, fetcher = query.message, runtime_of(request).fetcher
    params = query.options(parts.policy, caller, "query")
    # Checked before anything is read: a text-only model fails fast, whatever the upload's size.
    capabilities = await upstream.capabilities(model)
    query_links = [link.strip() for link in query.image_url or []]
    if len(query_links) > settings.max_images:
        raise too_many_images("query", URL_FIELD, settings)
    for index, link in enumerate(query_links):
        check_link(link, "query", index)
    require_vision(model, capabilities)
    if message is not None:
        check_text_length("message", message, settings)

    async def read_question() -> Question:
        body = body_chunks(request, settings)
        form = await read_vision_form(
            request.headers.get("content-type"), body, settings, len(query_links)
        )  # bounded by BodyTimeout
        form_message = form.fields.get("message")
        if message is not None and form_message is not None:
            raise InvalidInputError.single("body", "message", "send message in the query or the form, not both")
        text = message if message is not None else form_message
        if text is None:
            raise InvalidInputError.single("query", "message", "a message is required (query or form field)", "missing")
        check_text_length("message", text, settings, source="query" if message is not None else "body")
        links = [(link, "query", index) for index, link in enumerate(query_links)]
        links += [(link, "body", index) for index, link in enumerate(form.links)]
        fetched = await parts.watch.until(_fetch_all(fetcher, links)) if links else []
        return Question(text, form.base64_images() + fetched)

    return Generation(parts, params, read_question)


@_post(
    "/vision/{model_name:path}",
    operation_id="Vision",
    summary="Ask about images",
    description=VISION_DESCRIPTION,
)
async def vision(request: Request[Any, Any, Any], model_name: ModelName) -> GenerateResponse:
    """Return the model's whole answer about the images."""
    return await whole_answer(await vision_generation(request, model_name))


@_post(
    "/stream/vision/{model_name:path}",
    operation_id="VisionStream",
    summary="Stream the answer about images",
    description=f"{VISION_DESCRIPTION}\n\n{STREAM_DESCRIPTION}",
)
async def vision_stream(request: Request[Any, Any, Any], model_name: ModelName) -> Stream:
    """Relay the answer about the images token by token."""
    return await relayed(request, await vision_generation(request, model_name))
