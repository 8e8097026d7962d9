"""Image questions: ``POST /vision/{model}`` and ``POST /stream/vision/{model}`` (multipart)."""

from __future__ import annotations

from typing import Annotated, Any, Final

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Stream

from minato.errors import CapabilityError, InvalidInputError
from minato.handlers.common import GENERATION_RESPONSES, error_spec, note_model, streamed_answer, whole_answer
from minato.handlers.generate import STREAM_DESCRIPTION, ModelName
from minato.images import read_vision_form
from minato.options import GenerationOptions, check_text_length, validate_model_name
from minato.schemas import GenerateResponse
from minato.sessions import SessionManager
from minato.settings import Settings
from minato.upstream import OllamaClient

VISION_DESCRIPTION: Final = (
    "A `multipart/form-data` body with one or more `images` file parts (PNG, JPEG, WebP, GIF or "
    "BMP, recognised by content) and the question as `message`, either in the query string or as "
    "a form field. The model must have Ollama's `vision` capability."
)
VISION_RESPONSES: Final = {
    **GENERATION_RESPONSES,
    400: error_spec("The model has no `vision` capability, or Ollama refused the request."),
    413: error_spec("An image or the whole body is larger than the configured limit."),
}
OptionalMessage = Annotated[
    str | None,
    Parameter(description="The question about the images (or send it as the `message` form field)."),
]


async def _vision_request(
    request: Request[Any, Any, Any],
    model_name: str,
    message: str | None,
    upstream: OllamaClient,
    settings: Settings,
) -> tuple[str, str, list[str]]:
    model = validate_model_name(model_name)
    note_model(request, model)
    # Checked before the upload is read: a text-only model fails fast, whatever the image size.
    capabilities = await upstream.capabilities(model)
    if "vision" not in capabilities:
        listed = ", ".join(sorted(capabilities)) or "none reported"
        raise CapabilityError(f"model '{model}' cannot read images (its capabilities: {listed})")
    form = await read_vision_form(request, settings)
    form_message = form.fields.get("message")
    if message is not None and form_message is not None:
        raise InvalidInputError.single("body", "message", "send message in the query or the form, not both")
    text = message if message is not None else form_message
    if text is None:
        raise InvalidInputError.single("query", "message", "a message is required (query or form field)", "missing")
    check_text_length("message", text, settings)
    return model, text, form.base64_images()


@post(
    "/vision/{model_name:path}",
    operation_id="Vision",
    summary="Ask about images",
    description=VISION_DESCRIPTION,
    status_code=200,
    responses=VISION_RESPONSES,
    tags=["vision"],
)
async def vision(
    request: Request[Any, Any, Any],
    model_name: ModelName,
    params: NamedDependency[GenerationOptions],
    upstream: NamedDependency[OllamaClient],
    sessions: NamedDependency[SessionManager],
    settings: NamedDependency[Settings],
    message: OptionalMessage = None,
) -> GenerateResponse:
    """Return the model's whole answer about the uploaded images."""
    model, text, images = await _vision_request(request, model_name, message, upstream, settings)
    return await whole_answer(request, upstream, sessions, params, model, text, images)


@post(
    "/stream/vision/{model_name:path}",
    operation_id="VisionStream",
    summary="Stream the answer about images",
    description=f"{VISION_DESCRIPTION}\n\n{STREAM_DESCRIPTION}",
    status_code=200,
    responses=VISION_RESPONSES,
    tags=["vision"],
)
async def vision_stream(
    request: Request[Any, Any, Any],
    model_name: ModelName,
    params: NamedDependency[GenerationOptions],
    upstream: NamedDependency[OllamaClient],
    sessions: NamedDependency[SessionManager],
    settings: NamedDependency[Settings],
    message: OptionalMessage = None,
) -> Stream:
    """Relay the answer about the uploaded images token by token."""
    model, text, images = await _vision_request(request, model_name, message, upstream, settings)
    return await streamed_answer(request, upstream, sessions, params, model, text, images)
