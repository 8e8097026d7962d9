"""The facts a request gathers for its log line and metrics, carried in the ASGI scope."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from minato.auth.caller import Caller

RECORD_KEY: Final = "minato.record"


class RequestRecord:
    """Facts a handler adds to its request's log line (and, from there, to the metrics)."""

    __slots__ = (
        "backend",
        "caller",
        "client_gone",
        "first_token",
        "model",
        "ollama_seconds",
        "prompt_tokens",
        "queue_seconds",
        "request_id",
        "sent",
        "started",
        "streaming",
        "tokens",
        "tokens_per_second",
        "upstream_error",
    )

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.model: str | None = None
        self.backend = ""
        """Which backend of the pool answered (``host:port``)."""
        self.caller: Caller | None = None
        """Whose key the request carried (none without keys); its name labels the token metrics."""
        self.tokens: int | None = None
        """Tokens generated (Ollama's ``eval_count``, or those relayed so far)."""
        self.prompt_tokens: int | None = None
        """Tokens of the prompt (Ollama's ``prompt_eval_count``), once Ollama said it."""
        self.queue_seconds = 0.0
        """Seconds the request waited for a generation slot (``Server-Timing: queue``)."""
        self.sent: float | None = None
        """``perf_counter()`` when the request left for Ollama (``Server-Timing: minato`` is the time before)."""
        self.ollama_seconds: float | None = None
        """Seconds Ollama took for a whole answer (``Server-Timing: ollama``)."""
        self.tokens_per_second: float | None = None
        self.first_token: float | None = None
        """Seconds from the request to the first token written (streams)."""
        self.streaming = False
        self.upstream_error: str | None = None
        """The kind of Ollama failure this request met, if any."""
        self.client_gone = False
        """The client left before its whole answer was written (logged and counted as 499)."""

    def note_answer(self, tokens: int, tokens_per_second: float) -> None:
        """Note the size and speed of the finished answer (Ollama's count replaces the relayed one)."""
        self.tokens = tokens
        self.tokens_per_second = tokens_per_second

    def note_relayed(self, tokens: int) -> None:
        """Count ``tokens`` relayed to the client as they pass, so that an answer the client leaves, or
        that breaks off, is still charged (and counted) for what it relayed."""
        self.tokens = (self.tokens or 0) + tokens

    def mark_first_token(self) -> None:
        """Note that the first token is being written now."""
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started


def record_of(scope: Mapping[str, Any]) -> RequestRecord | None:
    """Return the log record of the request in ``scope``, if the logging middleware made one."""
    record: RequestRecord | None = scope.get("state", {}).get(RECORD_KEY)
    return record


#: The record of the request being served in this context (set by the request log middleware for the
#: request's time). Every line logged meanwhile takes the request id and the key's name from it
#: (:func:`minato.observability.logging.add_request_facts`): one ``ContextVar.set`` per request instead
#: of binding and unbinding structlog's context variables (a few µs per request).
CURRENT_RECORD: Final[ContextVar[RequestRecord | None]] = ContextVar("minato.record", default=None)
