"""Ollama's failures in Minato's words: error statuses and bodies, broken connections.

Apart from the client and the streams because both need it, and because it is the one place that
decides what a client may read of a failure upstream: Minato's own sentence, with the honest
status. The libraries' texts (the socket's, the TLS library's, msgspec's) go to the log only.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from typing import Final
from urllib.parse import urlsplit

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

_error_decoder: Final = msgspec.json.Decoder(ErrorBody)
logger = structlog.get_logger("minato.upstream")
#: Ollama's words for a model it does not have: ``model 'x' not found`` (chat, generate, show, delete)
#: or ``model "x" not found, try pulling it first`` (the scheduler's, as embed says it). Not gin's
#: ``404 page not found`` (no such route) nor ``blob "x" not found``.
_ERRNO_PROBLEMS: Final = {
    errno.ECONNREFUSED: "the connection was refused",
    errno.ECONNRESET: "the connection was reset",
    errno.ECONNABORTED: "the connection was aborted",
    errno.EHOSTUNREACH: "the host is unreachable",
    errno.ENETUNREACH: "the network is unreachable",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EADDRNOTAVAIL: "the address is not available",
}
_MAX_CAUSES: Final = 8
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


def transport_error(
    exc: BaseException | None, ollama_url: str, connect_timeout: float, *, connecting: bool
) -> MinatoError:
    """Minato's sentence for a failed exchange with Ollama: ``connecting`` (no connection: ``exc`` an
    :class:`OSError`, :class:`socket.gaierror`, :class:`ssl.SSLError` or :class:`TimeoutError`), or the
    connection closed before the answer began (``exc`` why, ``None`` for an orderly close). The
    library's text goes to the log."""
    log_library_error("ollama_connection_failed", exc or _ClosedError("the server closed the connection"), ollama_url)
    if connecting and isinstance(exc, TimeoutError):
        return OllamaUnavailableError(
            f"Ollama is unreachable at {ollama_url}: no connection within "
            f"{connect_timeout:g} s (MINATO_CONNECT_TIMEOUT)"
        )
    host = urlsplit(ollama_url).hostname or ollama_url
    if connecting:
        return OllamaUnavailableError(f"Ollama is unreachable at {ollama_url}: {connection_problem(exc, host)}")
    if isinstance(exc, TimeoutError):
        return OllamaTimeoutError(f"Ollama at {ollama_url} did not answer in time")
    if exc is None or not isinstance(exc, OSError) or exc.errno is None:
        return OllamaConnectionLostError(f"Ollama at {ollama_url} closed the connection before answering")
    return OllamaConnectionLostError(
        f"the connection to Ollama at {ollama_url} failed: {connection_problem(exc, host)}"
    )


def connect_error(exc: BaseException, ollama_url: str, connect_timeout: float) -> MinatoError:
    """Minato's sentence for a connection to Ollama that could not be made."""
    return transport_error(exc, ollama_url, connect_timeout, connecting=True)


def lost_before_answer(exc: BaseException | None, ollama_url: str) -> MinatoError:
    """Minato's sentence for a connection that closed (or broke) before Ollama's answer began."""
    return transport_error(exc, ollama_url, 0.0, connecting=False)


def connection_problem(exc: BaseException | None, host: str) -> str:
    """Say in plain words why a connection to ``host`` failed, from the exception and its causes.

    The library's own text (``[Errno 111] Connect call failed ...``, aiohttp's ``Cannot connect to
    host ... ssl:default [...]``) is for the log; this is the sentence a client may read.
    """
    current = exc
    for _ in range(_MAX_CAUSES):
        if current is None:
            break
        if isinstance(current, socket.gaierror):
            return f"cannot resolve host {host}"
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return "the TLS handshake failed"
        if isinstance(current, OSError) and current.errno in _ERRNO_PROBLEMS:
            return _ERRNO_PROBLEMS[current.errno]
        current = current.__cause__ or current.__context__
    return "the connection failed"


class _ClosedError(Exception):
    """An orderly close where an answer was due, for the log."""


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
