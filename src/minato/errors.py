"""Minato's error tree. A leaf: it imports nothing of Minato's, and knows no HTTP body shape
(:mod:`minato.web.rendering` is the one place that turns these errors into responses).

::

    MinatoError                      (status decided by the subclass)
    ├── InvalidInputError            422  one or more ErrorItem (loc, msg, type)
    ├── PayloadTooLargeError         413
    ├── BadRequestError              400  a body Minato cannot read as Ollama would (a door's), or too deep
    ├── CapabilityError              400  the model cannot do what was asked (e.g. vision)
    ├── ForbiddenError               403  the caller's key may not do this (an admin key may)
    ├── RequestTimeoutError          408  the request body did not arrive in time
    ├── ClientDisconnectedError      499  the client left before its answer was ready (logged, never sent)
    ├── ModelNotFoundError           404  Ollama does not know the model
    ├── SessionNotFoundError         404  no conversation with that id
    ├── KeyNotFoundError             404  an admin named a key no keys file or list configures
    ├── AmbiguousSessionError        409  an admin named an id several keys have, without owner=
    ├── SessionDamagedError          409  the store's pages holding a conversation are damaged
    ├── OverloadedError              503  Minato's own generation queue is full (with Retry-After)
    ├── StateUnavailableError        503  the shared state (Redis, the embedded store) cannot answer (with Retry-After)
    └── UpstreamError                502  Ollama failed in some other way
        ├── UpstreamRejectedError    400  Ollama refused the request as malformed
        ├── OllamaUnavailableError   503  no connection to Ollama
        ├── OllamaBusyError          503  Ollama's queue is full (with Retry-After)
        ├── OllamaConnectionLostError 502 the connection to Ollama broke before it answered
        └── OllamaTimeoutError       504  Ollama did not answer in time

Outside the tree, because no client ever sees them as such: :class:`SettingsError` (start-up),
:class:`StreamAbortedError` (cuts a plain-text body) and :class:`ImageLinkRefusedError` (turned
into a 4xx naming the link by the fetcher).
"""

from __future__ import annotations

from typing import Final

import msgspec

BUSY_RETRY_AFTER_SECONDS: Final = 5
#: Seconds a client refused by Minato's own backpressure is told to wait.
OVERLOADED_RETRY_AFTER_SECONDS: Final = 2
#: Seconds a client refused because the shared state cannot answer is told to wait.
STATE_RETRY_AFTER_SECONDS: Final = 5


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class StreamAbortedError(Exception):
    """Raised inside a plain-text stream to abort its chunked body after a mid-stream failure.

    The failure has already been logged; the ASGI server only has to drop the connection so the
    client sees an incomplete response instead of a truncated answer that looks complete.
    """


class ImageLinkRefusedError(Exception):
    """A fetch failed in a way the caller is told about; turned into a 4xx by ``ImageFetcher.fetch``."""

    def __init__(self, msg: str, *, too_large: bool = False) -> None:
        super().__init__(msg)
        self.msg = msg
        self.too_large = too_large


class ErrorItem(msgspec.Struct, frozen=True):
    """One validation problem, shaped as in the seed API."""

    loc: list[str | int]
    msg: str
    type: str


class MinatoError(Exception):
    """Base of every error Minato raises on purpose."""

    status_code: int = 500

    def __init_subclass__(cls, *, status: int | None = None) -> None:
        # The status is declared in the class line (`class X(MinatoError, status=404)`); a
        # subclass without one keeps its parent's.
        super().__init_subclass__()
        if status is not None:
            cls.status_code = status

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidInputError(MinatoError, status=422):
    """The request names a parameter with a bad value."""

    def __init__(self, items: list[ErrorItem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in items))
        self.items = items

    @classmethod
    def single(cls, source: str, name: str, msg: str, kind: str = "value_error") -> InvalidInputError:
        """Build the error for one parameter."""
        return cls([ErrorItem(loc=[source, name], msg=msg, type=kind)])


class PayloadTooLargeError(MinatoError, status=413):
    """A body, an image or a count exceeds a configured limit."""


class BadRequestError(MinatoError, status=400):
    """A request Minato refuses before Ollama sees it: a body it cannot read the way Ollama would, an
    option Ollama would read otherwise than Minato checked it, JSON nested too deep. The caller's
    mistake, never counted as Ollama's."""


class CapabilityError(MinatoError, status=400):
    """The model lacks a capability the route needs."""


class ForbiddenError(MinatoError, status=403):
    """The caller's key may not do what it asked; an admin key may."""


class RequestTimeoutError(MinatoError, status=408):
    """The client did not send its request body in time."""


class ClientDisconnectedError(MinatoError, status=499):
    """The client went away before its answer was ready (logged as nginx's 499)."""


class ModelNotFoundError(MinatoError, status=404):
    """Ollama has no such model."""


class SessionNotFoundError(MinatoError, status=404):
    """No conversation has that id (or it expired)."""


class KeyNotFoundError(MinatoError, status=404):
    """No configured key has that name."""


class AmbiguousSessionError(MinatoError, status=409):
    """Several keys have a conversation with that id, and the admin did not say whose."""


class SessionDamagedError(MinatoError, status=409):
    """The session store cannot read or write a conversation: its pages are damaged.

    A 409, not a 5xx: clients retry server errors, and no retry can help; deleting it can.
    """

    def __init__(self, owner: str, session_id: str, reason: str) -> None:
        # With the owner named, the DELETE is right for the owner's key and for an admin's alike.
        target = f"/chat/{session_id}?owner={owner}" if owner else f"/chat/{session_id}"
        super().__init__(
            f"conversation '{session_id}' is damaged in the session store ({reason}); DELETE {target} removes it"
        )
        self.owner = owner
        self.session_id = session_id


class UpstreamError(MinatoError, status=502):
    """Ollama answered with an error Minato cannot attribute to the caller."""


class UpstreamRejectedError(UpstreamError, status=400):
    """Ollama rejected the request as invalid (its 400)."""


class OllamaUnavailableError(UpstreamError, status=503):
    """Ollama cannot be reached."""


class OllamaBusyError(UpstreamError, status=503):
    """Ollama's own queue is full; the caller should retry later."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})


class OllamaConnectionLostError(UpstreamError, status=502):
    """The connection to Ollama broke before it answered (a backend of a pool may be tried next)."""


class OllamaTimeoutError(UpstreamError, status=504):
    """Ollama did not answer within the configured time."""


class OverloadedError(MinatoError, status=503):
    """Minato is running all the generations it may, and its queue is full (or the wait too long)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_SECONDS)})


class StateUnavailableError(MinatoError, status=503):
    """The shared state a request needs (Redis, or the embedded store) cannot answer: the request is
    refused rather than served without its turn recorded or past its limits (fail closed)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(STATE_RETRY_AFTER_SECONDS)})
