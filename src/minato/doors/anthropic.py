"""The Anthropic-compatible API on Minato's port (``/v1/messages``), relayed to Ollama's."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, post
from litestar.di import NamedDependency

from minato.doors import calls
from minato.doors.body import check_nested_names
from minato.doors.policy import CLOUD_REFUSED
from minato.errors import ForbiddenError
from minato.rendering import StreamDialect
from minato.runtime import runtime_of
from minato.security import Caller

#: Anthropic's server tools that Ollama runs on ollama.com under the operator's account.
_CLOUD_TOOLS: Final = ("web_search", "web_fetch")
_TYPE: Final = frozenset({"type"})


@post(
    "/v1/messages",
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
    for tool in tools:
        check_nested_names(tool, _TYPE, "tools[]")
        if str(tool.get("type", "")).startswith(_CLOUD_TOOLS) and not runtime_of(request).settings.allow_cloud:
            raise ForbiddenError(f"the {tool['type']} tool: {CLOUD_REFUSED}")
    return await calls.generation(request, caller, StreamDialect.ANTHROPIC, stream_default=False, body=body)


ANTHROPIC_HANDLERS: Final = [messages]
