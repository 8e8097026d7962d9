"""The OpenAI-compatible API on Minato's port (``/v1/...``), relayed to Ollama's ``/v1`` routes."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, get, post
from litestar.di import NamedDependency

from minato.auth.caller import Caller
from minato.web.doors import calls
from minato.web.doors.native import GENERATION_ROUTE, PathText
from minato.web.rendering import StreamDialect
from minato.web.runtime import runtime_of

TAGS: Final = ["openai"]
_SAME: Final = "Relayed to Ollama's OpenAI-compatible route of the same name."
_CUT: Final = "A stream that Ollama ends without `data: [DONE]` gets an error frame, which the SDKs raise on."


def _doc(summary: str, more: str = "", opt: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"summary": summary, "description": f"{_SAME} {more}".strip(), "tags": TAGS, "opt": opt}


@post(
    "/v1/chat/completions",
    operation_id="OpenAIChatCompletions",
    **_doc("OpenAI: chat completions", _CUT, GENERATION_ROUTE),
)
async def chat_completions(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """OpenAI's ``/v1/chat/completions``."""
    return await calls.generation(
        request, caller, StreamDialect.OPENAI, stream_default=False, usage_frames=True, answer_limit=calls.MAX_TOKENS
    )


@post("/v1/completions", operation_id="OpenAICompletions", **_doc("OpenAI: text completions", _CUT, GENERATION_ROUTE))
async def completions(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """OpenAI's ``/v1/completions``."""
    return await calls.generation(
        request, caller, StreamDialect.OPENAI, stream_default=False, usage_frames=True, answer_limit=calls.MAX_TOKENS
    )


@post(
    "/v1/responses",
    operation_id="OpenAIResponses",
    **_doc("OpenAI: responses", "Zstd-compressed bodies (Codex) are accepted.", GENERATION_ROUTE),
)
async def responses(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """OpenAI's ``/v1/responses``."""
    return await calls.generation(
        request, caller, StreamDialect.RESPONSES, stream_default=False, answer_limit=calls.MAX_OUTPUT_TOKENS
    )


@post("/v1/embeddings", operation_id="OpenAIEmbeddings", **_doc("OpenAI: embeddings", opt=GENERATION_ROUTE))
async def embeddings(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """OpenAI's ``/v1/embeddings``."""
    return await calls.generation(request, caller, StreamDialect.OPENAI, stream_default=False)


@get("/v1/models", operation_id="OpenAIModels", **_doc("OpenAI: models", "Only the key's models."))
async def models(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """OpenAI's ``/v1/models``, filtered to the key's models."""
    return await calls.listing(request, caller, field="data", name="id")


@get("/v1/models/{model_id:path}", operation_id="OpenAIModel", **_doc("OpenAI: one model"))
async def model(request: Request[Any, Any, Any], caller: NamedDependency[Caller], model_id: PathText) -> Response[Any]:
    """OpenAI's ``/v1/models/{model}``."""
    name = model_id.lstrip("/")
    runtime_of(request).policy.check_model(caller, name)
    return await calls.plain(request, name, dialect=StreamDialect.OPENAI, route_by=name)


OPENAI_HANDLERS: Final = [chat_completions, completions, responses, embeddings, models, model]
