"""The front doors: Ollama's own API, the OpenAI API and the Anthropic API, on Minato's port.

Each door relays requests to Ollama's route of the same name as bytes, and Ollama's answers back
as Ollama sends them, with Minato's keys, scopes, quotas, limits and metrics on every route:

- ``body``: reading a body (bounded, zstd) and the few fields Minato decides on;
- ``calls``: the kinds of call (a generation, a model list, a call about a model, a plain one), each
  asking :class:`minato.core.policy.Policy` what the key may do;
- ``relay``: forwarding, and watching the answer on its way back (tokens, a stream cut short);
- ``native``, ``openai``, ``anthropic``: the routes of each door.
"""

from typing import Final

from litestar.types import ControllerRouterHandler

from minato.web.doors.anthropic import ANTHROPIC_HANDLERS
from minato.web.doors.native import NATIVE_HANDLERS
from minato.web.doors.openai import OPENAI_HANDLERS

DOOR_HANDLERS: Final[list[ControllerRouterHandler]] = [*NATIVE_HANDLERS, *OPENAI_HANDLERS, *ANTHROPIC_HANDLERS]

__all__ = ["DOOR_HANDLERS"]
