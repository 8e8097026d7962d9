"""The headers every generation response carries: the calling key's limits as OpenAI reports them
(``x-ratelimit-*``), and where the time went (``Server-Timing``).

They are rendered in one place (:func:`add_limit_headers`, called on each response head by the request
log's ``send``), for Minato's own generation routes and every door
alike, from what the request already knows: the guard (:mod:`minato.web.auth`) leaves where the key's
request bucket and token quota stood in the scope's state, and the request's record
(:class:`~minato.observability.record.RequestRecord`) holds its timings. Nothing is asked of the shared
state again.

- ``x-ratelimit-{limit,remaining,reset}-requests``: the key's request rate (a token bucket of
  ``requests_per_minute``); remaining is what the bucket held once this request was taken, reset the
  time until it is full again.
- ``x-ratelimit-{limit,remaining,reset}-tokens``: the key's daily token quota (a rolling 24 h);
  remaining is what the quota had left when the request began, less what this answer generated when
  the answer is whole (a stream's head leaves before its tokens); reset is the time until every
  counted token has left the window (once this answer was charged, 24 h counted from its minute).
- ``Server-Timing``: ``queue`` (waiting for a generation slot), ``minato`` (Minato's own time before
  the request left for Ollama; for an answer Minato gave itself, its whole time) and, on a whole
  answer, ``ollama`` (from then until Ollama's answer was complete), in milliseconds.

A key without a limit, or a deployment without keys, gets no ``x-ratelimit`` header for it. A 429 the
guard raised carries the ``x-ratelimit`` headers on every route (with its ``Retry-After``): they say
why it was refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from litestar.handlers.base import BaseRouteHandler
from litestar.types import HTTPResponseStartEvent, Scope

from minato.observability.record import RECORD_KEY
from minato.state.windows import BUCKET_SECONDS, WINDOW_MINUTES
from minato.web.api.common import GENERATION_OPT
from minato.web.auth import CALLER_STATE_KEY, QUOTA_STATE_KEY, RATE_STATE_KEY

if TYPE_CHECKING:
    from minato.auth.caller import Caller
    from minato.observability.record import RequestRecord
    from minato.state.windows import Bucket, Standing

#: Route ``opt`` key: a door's route that generates (takes a generation slot). Minato's own generation
#: routes carry :data:`~minato.web.api.common.GENERATION_OPT`, which also asks for a model in the path.
GENERATES: Final = "generates"
#: The names of the headers, as browsers may be allowed to read them (CORS).
RATE_LIMIT_HEADERS: Final = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
SERVER_TIMING: Final = "Server-Timing"
_LIMIT_REQUESTS, _REMAINING_REQUESTS, _RESET_REQUESTS, _LIMIT_TOKENS, _REMAINING_TOKENS, _RESET_TOKENS = (
    name.encode() for name in RATE_LIMIT_HEADERS
)
_SERVER_TIMING: Final = SERVER_TIMING.lower().encode()
#: When an answer was charged just now, its tokens leave the window with its minute's bucket: 24 h on,
#: and at most a minute more (the home's clock, which says where the minute began, is not read here).
_CHARGED_RESETS: Final = float((WINDOW_MINUTES + 1) * BUCKET_SECONDS)
_TOO_MANY_REQUESTS: Final = 429


def duration(seconds: float) -> str:
    """``seconds`` as OpenAI writes its resets (Go's duration format, to the millisecond): ``0s``,
    ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    if millis < 60_000 and not millis % 1000:  # the usual reset of a request rate: whole seconds
        return f"{millis // 1000}s"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, fraction = divmod(millis, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    return f"{minutes}m{text}s" if minutes else f"{text}s"


def rate_limit_headers(
    caller: Caller, rate: Bucket | None, quota: Standing | None, generated: int
) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit`` headers for ``caller``, from where its bucket and its quota stood (each
    ``None`` when the guard did not ask: the key has no such limit). ``generated``: the tokens the whole
    answer generated (0 for a stream's head, or a refusal)."""
    headers: list[tuple[bytes, bytes]] = (
        [
            (_LIMIT_REQUESTS, b"%d" % caller.requests_per_minute),
            (_REMAINING_REQUESTS, b"%d" % rate.remaining),
            (_RESET_REQUESTS, duration(rate.reset).encode()),
        ]
        if rate is not None and caller.requests_per_minute
        else []
    )
    if quota is not None and caller.tokens_per_day:
        left = quota.left - generated if generated > 0 else quota.left
        resets = quota.resets if generated <= 0 or quota.resets > _CHARGED_RESETS else _CHARGED_RESETS
        headers += (
            (_LIMIT_TOKENS, b"%d" % caller.tokens_per_day),
            (_REMAINING_TOKENS, b"%d" % (left if left > 0 else 0)),
            (_RESET_TOKENS, duration(resets).encode()),
        )
    return headers


def server_timing(record: RequestRecord, clock: Callable[[], float] = time.perf_counter) -> bytes:
    """The ``Server-Timing`` value of ``record``'s request; ``clock`` tells when its head leaves, for an
    answer Minato gave itself (nothing was sent to Ollama)."""
    queue = record.queue_seconds
    sent = record.sent
    own = (sent if sent is not None else clock()) - record.started - queue
    ollama = record.ollama_seconds
    if ollama is None:
        return b"queue;dur=%.1f, minato;dur=%.1f" % (queue * 1000, own * 1000)
    return b"queue;dur=%.1f, minato;dur=%.1f, ollama;dur=%.1f" % (queue * 1000, own * 1000, ollama * 1000)


def add_limit_headers(scope: Scope, message: HTTPResponseStartEvent) -> None:
    """Add the headers to the head of a generation response (and the limits to a 429 the guard raised).

    The request log's ``send`` calls it on every response head (its ``on_head``). A stream's body
    chunks do not pass here (see :data:`minato.web.middleware.BODY_SEND_KEY`)."""
    handler: BaseRouteHandler | None = scope.get("route_handler")
    if handler is None:  # no route matched: nothing was generated, nothing was limited
        return
    opt = handler.opt
    generation = bool(opt.get(GENERATION_OPT) or opt.get(GENERATES))
    if not generation and message["status"] != _TOO_MANY_REQUESTS:
        return
    state = scope.get("state", {})
    record: RequestRecord | None = state.get(RECORD_KEY)
    caller: Caller | None = state.get(CALLER_STATE_KEY)
    added: list[tuple[bytes, bytes]] = []
    if caller is not None:
        generated = (record.tokens or 0) if record is not None and not record.streaming else 0
        added = rate_limit_headers(caller, state.get(RATE_STATE_KEY), state.get(QUOTA_STATE_KEY), generated)
    if generation and record is not None:
        added.append((_SERVER_TIMING, server_timing(record)))
    if added:
        message["headers"] = [*message.get("headers", ()), *added]


__all__ = [
    "GENERATES",
    "RATE_LIMIT_HEADERS",
    "SERVER_TIMING",
    "add_limit_headers",
    "duration",
    "rate_limit_headers",
    "server_timing",
]
