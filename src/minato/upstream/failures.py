"""Ollama's failures in Minato's words: error statuses and bodies, broken connections.

Apart from the client and the streams because both need it, and because it is the one place that
decides what a client may read of a failure upstream: Minato's own sentence, with the honest
status. The libraries' texts (httpx's, aiohttp's, msgspec's) go to the log only.
"""

from __future__ import annotations

import re
from typing import Final

import httpx
import msgspec
import structlog

from minato.errors import (
    MinatoError,
    ModelNotFoundError,
    OllamaBusyError,
    OllamaConnectionLostError,
    OllamaTimeoutError,
    OllamaUnavailableError,
    UpstreamError,
    UpstreamRejectedError,
)
from minato.ollama.wire import ErrorBody
from minato.upstream.transport import connection_problem

_error_decoder: Final = msgspec.json.Decoder(ErrorBody)
logger = structlog.get_logger("minato.upstream")
#: Ollama's words for a model it does not have: ``model 'x' not found`` (chat, generate, show, delete)
#: or ``model "x" not found, try pulling it first`` (the scheduler's, as embed says it). Not gin's
#: ``404 page not found`` (no such route) nor ``blob "x" not found``.
_MODEL_MISSING: Final = re.compile(r"""model (?:'[^']*'|"(?:[^"\\]|\\.)*") not found(?:, try pulling it first)?""")


def status_error(status: int, body: bytes, model: str) -> MinatoError:
    """Translate a non-2xx Ollama answer into the Minato error with the honest status."""
    message = _error_message(body)
    is_ollama_error = body[:1] == b"{"
    if status == 404 and is_ollama_error:
        return ModelNotFoundError(message or f"model '{model}' not found")
    if status == 400:
        return UpstreamRejectedError(message)
    if status in (429, 503):
        return OllamaBusyError(message or "Ollama is busy")
    if status == 403 and not body:
        return UpstreamError(
            "Ollama refused the request (403): it only accepts local Host headers when bound to "
            "loopback; point MINATO_OLLAMA_URL at an address Ollama accepts"
        )
    if status == 404:
        return UpstreamError(f"Ollama answered 404 ({message}); is MINATO_OLLAMA_URL an Ollama server?")
    return UpstreamError(f"Ollama answered {status}: {message}" if message else f"Ollama answered {status}")


def says_model_missing(status: int, body: bytes) -> bool:
    """Whether an answer is Ollama's "model not found", in the words of any door (native ``{"error"}``,
    OpenAI's and Anthropic's ``{"error": {"message"}}``): that backend does not have the model."""
    return status == 404 and body[:1] == b"{" and _MODEL_MISSING.fullmatch(_error_message(body)) is not None


def _error_message(body: bytes) -> str:
    if body[:1] == b"{":
        try:
            error = _error_decoder.decode(body).error
        except msgspec.DecodeError:
            pass
        else:
            if isinstance(error, str) and error[:1] == "{":
                # Ollama relays its llama-server runner's error body verbatim: {"error":{"message":...}}.
                return _error_message(error.encode())
            if isinstance(error, dict) and isinstance(message := error.get("message"), str):
                return message
            return error if isinstance(error, str) else str(error)
    return body.decode("utf-8", "replace").strip()[:500]


def transport_error(exc: httpx.HTTPError, ollama_url: str, connect_timeout: float) -> MinatoError:
    """Minato's sentence for a failed exchange with Ollama; the library's text goes to the log."""
    log_library_error("ollama_connection_failed", exc, ollama_url)
    host = httpx.URL(ollama_url).host
    if isinstance(exc, httpx.ConnectTimeout):
        return OllamaUnavailableError(
            f"Ollama is unreachable at {ollama_url}: no connection within "
            f"{connect_timeout:g} s (MINATO_CONNECT_TIMEOUT)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return OllamaTimeoutError(f"Ollama at {ollama_url} did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return OllamaUnavailableError(f"Ollama is unreachable at {ollama_url}: {connection_problem(exc, host)}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return OllamaConnectionLostError(f"Ollama at {ollama_url} closed the connection before answering")
    return OllamaConnectionLostError(
        f"the connection to Ollama at {ollama_url} failed: {connection_problem(exc, host)}"
    )


def log_library_error(event: str, exc: BaseException, ollama_url: str) -> None:
    """Log a library's own words for a failure (and its cause's), which clients never see."""
    cause = exc.__cause__
    logger.warning(
        event,
        ollama_url=ollama_url,
        error=f"{type(exc).__name__}: {_describe(exc)}",
        cause=None if cause is None else f"{type(cause).__name__}: {_describe(cause)}",
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
