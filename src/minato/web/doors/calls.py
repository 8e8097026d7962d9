"""The kinds of call a door relays: a generation, a model list, a call about one model, a plain one.

Each reads what it must decide on, checks it (scope, cloud, user limits) and hands the bytes to
:func:`minato.web.doors.relay.relay`. The door modules only map routes onto these.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

import msgspec
from litestar import Request, Response

from minato.auth.caller import Caller
from minato.core.policy import whole_number
from minato.ollama.options import parse_keep_alive
from minato.upstream.ports import Spread
from minato.web.auth import tokens_left
from minato.web.doors.body import BodyRefusedError, DoorBody, check_nested_names, read_body
from minato.web.doors.relay import Relay, relay
from minato.web.rendering import StreamDialect
from minato.web.runtime import Runtime, runtime_of

_INCLUDE_USAGE: Final = frozenset({"include_usage"})


async def read(request: Request[Any, Any, Any]) -> DoorBody:
    """The request's body, bounded like any body, as far as Minato reads it."""
    settings = runtime_of(request).settings
    return DoorBody.parse(await read_body(request, settings.max_body_bytes))


async def generation(
    request: Request[Any, Any, Any],
    caller: Caller,
    dialect: StreamDialect,
    *,
    stream_default: bool,
    native: bool = False,
    usage_frames: bool = False,
    body: DoorBody | None = None,
    answer_limit: str | None = None,
) -> Response[Any]:
    """A chat, completion or embedding: scope, limits, a generation slot, then Ollama's answer.

    ``native``: the route takes Ollama's ``keep_alive`` and ``options`` (user keys are limited as on
    Minato's own routes). ``usage_frames``: an OpenAI stream whose client did not ask for usage is
    asked for it anyway, so tokens are counted, and the extra frame is dropped on the way back.
    ``answer_limit``: the field Ollama reads as the answer's most tokens (``num_predict``), capped at
    what a key's quota has left; ``None`` for a route that generates no tokens (embeddings).
    """
    runtime = runtime_of(request)
    body = body if body is not None else await read(request)
    runtime.policy.check_models(caller, body.models)
    if native:
        await _check_native_options(runtime, caller, body)
    left = tokens_left(request.scope)
    if answer_limit is not None and left is not None:
        body = _within(body, answer_limit, left)
    streamed = body.stream(default=stream_default)
    strip = False
    if usage_frames and streamed:
        options = body.object("stream_options")
        check_nested_names(options, _INCLUDE_USAGE, "stream_options")
        if options.get("include_usage") is not True:
            body, strip = body.with_field("stream_options", {**options, "include_usage": True}), True
    call = Relay(
        request.method,
        route_path(request),
        body.raw,
        dialect,
        model=body.model or None,
        streamed=streamed,
        strip_usage=strip,
    )
    return await relay(request, runtime, call)


async def about_models(
    request: Request[Any, Any, Any],
    caller: Caller,
    *,
    stream_default: bool = False,
    spread: Spread = Spread.ONE,
    route_by: str | None = "model",
) -> Response[Any]:
    """A call naming models in its body (show, pull, push, create, copy, delete): scope checked.

    With a pool it goes to a backend having the model its ``route_by`` field names (``None``: the first
    reachable backend, where blob uploads go too), or to the backends ``spread`` names.
    """
    runtime = runtime_of(request)
    body = await read(request)
    runtime.policy.check_models(caller, body.models)
    target = (body.model if route_by == "model" else body.text(route_by)) if route_by else ""
    call = Relay(
        request.method,
        route_path(request),
        body.raw,
        StreamDialect.NDJSON,
        streamed=body.stream(default=stream_default),
        route_by=target or None,
        spread=spread,
    )
    return await relay(request, runtime, call)


async def _check_native_options(runtime: Runtime, caller: Caller, body: DoorBody) -> None:
    """Ollama's ``keep_alive`` and ``options.num_ctx``, read as Ollama reads them, asked of the policy."""
    runtime.policy.check_keep_alive(caller, _keep_alive_of(body))
    num_ctx = whole_number("num_ctx", body.object("options").get("num_ctx"))
    await runtime.policy.check_num_ctx(caller, runtime.upstream, body.model, num_ctx)


#: The field each door's Ollama route reads as the answer's most tokens, as ``parent.field`` or ``field``.
NUM_PREDICT: Final = "options.num_predict"
MAX_TOKENS: Final = "max_tokens"
MAX_OUTPUT_TOKENS: Final = "max_output_tokens"
#: OpenAI's newer name for ``max_tokens``: capped too when a client sends it.
_ALSO_CAPPED: Final = {MAX_TOKENS: ("max_completion_tokens",)}


def _within(body: DoorBody, limit: str, tokens: int) -> DoorBody:
    """``body`` with its answer capped at ``tokens`` (the key's quota left): the body is re-encoded only
    when the cap changes what it asks for; what it asked is read as Ollama reads a number."""
    parent, _, name = limit.rpartition(".")
    values = body.object(parent) if parent else {}
    asked = whole_number(name, values.get(name) if parent else body.field(name, int | float))
    if asked is None or asked <= 0 or asked > tokens:
        body = body.with_field(parent, {**values, name: tokens}) if parent else body.with_field(name, tokens)
    for other in _ALSO_CAPPED.get(limit, ()):
        also = whole_number(other, body.field(other, int | float))
        if also is not None and (also <= 0 or also > tokens):
            body = body.with_field(other, tokens)
    return body


def _keep_alive_of(body: DoorBody) -> float | str | None:
    """The body's ``keep_alive`` as Ollama reads it: seconds as a number, or a Go duration string."""
    value: Any = body.field("keep_alive", float | str)
    if value is None or isinstance(value, float):
        return value
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise BodyRefusedError(f"keep_alive: {exc}") from None


def route_path(request: Request[Any, Any, Any], *segments: str) -> str:
    """Ollama's path for this route: the route's own path, its parameters (``segments``) percent-encoded.

    Never the path as the client sent it: a decoded ``..%2F..%2Fapi%2Fps`` or ``a%3Fb`` in a parameter
    would otherwise walk the forwarded request to another Ollama route, or cut it with a query.
    """
    (template,) = request.route_handler.paths
    base = template.split("{", 1)[0]
    return base + "/".join(quote(segment, safe=":@") for segment in segments)


async def plain(
    request: Request[Any, Any, Any],
    *segments: str,
    dialect: StreamDialect = StreamDialect.NDJSON,
    spread: Spread = Spread.ONE,
    route_by: str | None = None,
) -> Response[Any]:
    """A call Minato only relays (version, blobs, the account routes once allowed)."""
    runtime = runtime_of(request)
    settings = runtime.settings
    raw = await read_body(request, settings.max_body_bytes) if request.method in {"POST", "DELETE"} else None
    call = Relay(request.method, route_path(request, *segments), raw, dialect, route_by=route_by, spread=spread)
    return await relay(request, runtime, call)


async def head(request: Request[Any, Any, Any], *segments: str) -> Response[None]:
    """A HEAD, relayed: Ollama's status and content type, no body."""
    call = Relay("HEAD", route_path(request, *segments), None, StreamDialect.NDJSON)
    answer = await relay(request, runtime_of(request), call)
    return Response(None, status_code=answer.status_code, media_type=answer.media_type)


async def listing(
    request: Request[Any, Any, Any], caller: Caller, *, field: str, name: str, spread: Spread = Spread.LIST
) -> Response[Any]:
    """A model list (``/api/tags``, ``/api/ps``, ``/v1/models``), showing only the key's models.

    A key without model patterns gets Ollama's bytes unchanged (a pool's lists merged); a scoped key
    gets the same document with the other models left out (``field`` holds the list, ``name`` names
    each entry's model).
    """
    answer = await plain(request, spread=spread)
    if caller.models is None or answer.status_code != 200 or not isinstance(answer.content, bytes):
        return answer
    try:
        document = msgspec.json.decode(answer.content)
    except msgspec.DecodeError:
        return answer
    entries = document.get(field) if isinstance(document, dict) else None
    if isinstance(document, dict):
        document[field] = [
            entry for entry in entries or [] if isinstance(entry, dict) and caller.allows(_model_of(entry, name))
        ]
    return Response(msgspec.json.encode(document), status_code=200, media_type=answer.media_type)


def _model_of(entry: dict[str, Any], name: str) -> str:
    return str(entry.get(name) or entry.get("name") or "")


__all__ = ["about_models", "generation", "head", "listing", "plain", "read", "route_path"]
