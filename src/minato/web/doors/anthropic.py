"""The Anthropic-compatible API on Minato's port (``/v1/messages``), relayed to Ollama's."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, post
from litestar.di import NamedDependency

from minato.auth.caller import Caller
from minato.web.doors import calls
from minato.web.doors.body import check_nested_names
from minato.web.doors.native import GENERATION_ROUTE
from minato.web.rendering import StreamDialect
from minato.web.runtime import runtime_of

_TYPE: Final = frozenset({"type"})


@post(
    "/v1/messages",
    opt=GENERATION_ROUTE,
    operation_id="AnthropicMessages",
    summary="Anthropic: messages",
    description=(
        "Relayed to Ollama's Anthropic-compatible route. A stream that Ollama ends without "
        "`message_stop` gets an `event: error`, which the SDKs raise on."
    ),
    tags=["anthropic"],
)
async def messages(request: Request[Any, Any, Any], caller: NamedDependency[Caller]) -> Response[Any]:
    """Anthropic's ``/v1/messages``."""
    body = await calls.read(request)
    tools = body.field("tools", list[dict[str, Any]], [])
    policy = runtime_of(request).policy
    for tool in tools:
        check_nested_names(tool, _TYPE, "tools[]")
        policy.check_tool(str(tool.get("type", "")))
    return await calls.generation(
        request, caller, StreamDialect.ANTHROPIC, stream_default=False, body=body, answer_limit=calls.MAX_TOKENS
    )


ANTHROPIC_HANDLERS: Final = [messages]
