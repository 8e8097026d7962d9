"""The Ollama stand-in: a low-level ``aiohttp.web.Server`` speaking Ollama's native REST API.

Formats, statuses and error strings follow ``/work/shared/reference/ollama-api.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import math
import random
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import msgspec
from aiohttp import web

from tests.support.standin.catalogue import (
    INSTALLED_AT_START,
    PULLABLE,
    ModelName,
    ModelSpec,
    dynamic_spec,
    known_spec,
    parse_name,
)
from tests.support.standin.compat import (
    EVENT_STREAM,
    PLAIN_JSON,
    AnthropicWriter,
    ChatWriter,
    CompatError,
    CompleteWriter,
    Writer,
    anthropic_error,
    embedding_list,
    estimate_anthropic_tokens,
    openai_error,
    to_native_anthropic,
    to_native_chat,
    to_native_completion,
)
from tests.support.standin.gowire import (
    FOREVER_NS,
    DecodeError,
    decode_json_body,
    dumps,
    go_kind,
    go_quote,
    local_rfc3339,
    utc_rfc3339,
)
from tests.support.standin.responses import (
    ResponsesWriter,
    UnsupportedToolError,
    check_types,
    to_native_responses,
    unzstd,
)
from tests.support.standin.validate import (
    CHAT_FIELDS,
    COPY_FIELDS,
    CREATE_FIELDS,
    DELETE_FIELDS,
    EMBED_FIELDS,
    EMBEDDINGS_FIELDS,
    GENERATE_FIELDS,
    PULL_FIELDS,
    PUSH_FIELDS,
    SHOW_FIELDS,
    OptionError,
    RequestError,
    check_options,
    decode_request,
)

__all__ = ["Config", "StandIn", "start_models"]

JSON_CT: Final = "application/json; charset=utf-8"
NDJSON_CT: Final = "application/x-ndjson"
DEFAULT_KEEP_ALIVE_NS: Final = 5 * 60 * 1_000_000_000
DEFAULT_NUM_CTX: Final = 4096

ERR_MIDSTREAM: Final = "an error was encountered while running the model: unexpected EOF"
ERR_RUNNER_STOPPED: Final = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)
ERR_BUSY: Final = "server busy, please try again.  maximum pending requests exceeded"
ERR_PULL_MISSING: Final = "pull model manifest: file does not exist"
ERR_INVALID_NAME: Final = "invalid model name"  # errtypes.InvalidModelNameErrMsg
#: What a text-only model's llama-server (started without ``--mmproj``) answers to images on
#: ``/completion``: llama.cpp ``tools/server/server-common.cpp`` ``tokenize_input_subprompt`` throws,
#: ``handle_completions_impl`` answers it as ``ERROR_TYPE_INVALID_REQUEST``. Ollama (fb30760) relays the
#: body verbatim with the runner's 400: ``llm/llama_server.go:1603-1654`` → ``api.StatusError``;
#: ``server/routes.go:739`` (generate), ``:2903`` (chat), written as JSON before any byte even when
#: streaming (``:2116``). Models rendered natively by llama-server's chat template would instead get
#: its 500 "image input is not supported"; the stand-in's models all have Go templates (Ollama renders).
ERR_NO_MULTIMODAL: Final = (
    '{"error":{"code":400,"message":"Multimodal data provided, but model does not support multimodal '
    'requests.","type":"invalid_request_error"}}'
)

_WORDS: Final = ("The", "sky", "is", "blue", "because", "of", "Rayleigh", "scattering.")
_THINK_WORDS: Final = ("Okay,", "the", "user", "asks", "about", "the", "sky.")
_TOKENS: Final = tuple(w if i == 0 else " " + w for i, w in enumerate(_WORDS))
_TOKENS_CYCLED: Final = tuple(" " + w for w in _WORDS)
_THINK_TOKENS: Final = tuple(w if i == 0 else " " + w for i, w in enumerate(_THINK_WORDS))
_TOKEN_JSON: Final = {t: dumps(t) for t in (*_TOKENS, *_TOKENS_CYCLED, *_THINK_TOKENS)}
_CONTEXT_HEAD: Final = (128006, 9125, 128007)

Handler = Callable[[web.BaseRequest, bytes], Awaitable[web.StreamResponse]]


#: A typed key: aiohttp warns about a plain string (NotAppKeyWarning), which the suite turns into an error.
_BODY_KEY: Final = web.RequestKey("standin.body", bytes)


async def body_of(request: web.BaseRequest) -> bytes:
    """The whole request body, read once (a second call returns the same bytes), however large:
    Ollama sets no limit on a request body, and aiohttp's ``read()`` refuses more than 1 MiB."""
    if _BODY_KEY not in request:
        request[_BODY_KEY] = await request.content.read() if request.body_exists else b""
    return request[_BODY_KEY]


def _token(i: int) -> str:
    return _TOKENS[i] if i < len(_TOKENS) else _TOKENS_CYCLED[i % len(_WORDS)]


def _json(status: int, obj: object) -> web.Response:
    return web.Response(status=status, body=dumps(obj), headers={"Content-Type": JSON_CT})


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


def _image_count(body: dict[str, Any], messages: list[Any], chat: bool) -> int:
    """Images Ollama hands its runner: every entry (``null`` too) of ``images`` in any message of a chat
    (history included, ``server/prompt.go`` ``imageTaggedMessages``), or of a generate request's ``images``.

    Go matches JSON keys case-insensitively, so ``"Images"`` counts as well.
    """
    if not chat:
        return len(body.get("images") or [])
    count = 0
    for message in messages:
        if isinstance(message, dict):
            images = [value for key, value in message.items() if key.lower() == "images"]
            if images and isinstance(images[-1], list):
                count += len(images[-1])
    return count


def _text(status: int, text: str, content_type: str = "text/plain") -> web.Response:
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": content_type})


def _split_host_port(hostport: str) -> str | None:
    """``net.SplitHostPort`` returning only the host, or ``None`` when it fails."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None
        return hostport[1:end]
    if hostport.count(":") != 1:
        return None
    return hostport.partition(":")[0]


_PRIVATE_NETS: Final = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
)


def _go_ip_ok(text: str) -> bool | None:
    """Loopback / private / unspecified per Go's netip; ``None`` if ``text`` is not an IP."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_unspecified:
        return True
    return any(addr in net for net in _PRIVATE_NETS if net.version == addr.version)


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 0
    version: str = "0.33.0-rc2"
    token_delay_ms: float = 0.0
    pull_step_ms: float = 5.0
    host_guard: bool = True
    #: Models installed at start, as Ollama names them; ``None``: the default catalogue, plus the
    #: dynamic ``standin/tokens:<N>`` and ``standin/paced:<N>x<MS>`` (installed but not listed).
    models: tuple[str, ...] | None = None
    #: Installed models already loaded in memory at start, with Ollama's default keep-alive.
    loaded: tuple[str, ...] = ()
    #: Start with a full queue: every request that needs a runner gets Ollama's "server busy" 503.
    busy: bool = False


def _resolve(text: str, what: str) -> tuple[str, ModelSpec]:
    name = parse_name(text)
    spec = known_spec(name) if name is not None else None
    if name is None or spec is None:
        raise ValueError(f"{what}: the stand-in has no model {text!r} in its catalogue")
    return name.key, spec


def start_models(config: Config) -> tuple[dict[str, ModelSpec], dict[str, ModelSpec]]:
    """The installed and the loaded models a stand-in starts (and resets) with, keyed by name.

    Raises ``ValueError`` for a name the catalogue does not know, or a loaded model not installed.
    """
    names = config.models
    specs = INSTALLED_AT_START if names is None else ()
    installed = dict(_resolve(spec.name, "catalogue") for spec in specs)
    for text in names or ():
        key, spec = _resolve(text, "--models")
        installed.setdefault(key, spec)
    loaded: dict[str, ModelSpec] = {}
    for text in config.loaded:
        key, spec = _resolve(text, "--loaded")
        if key not in installed:
            raise ValueError(f"--loaded: {text!r} is not installed (add it to --models)")
        loaded[key] = installed[key]
    return installed, loaded


@dataclass(slots=True)
class Installed:
    spec: ModelSpec
    modified_ns: int


@dataclass(slots=True)
class Loaded:
    spec: ModelSpec
    expires_ns: int
    context_length: int
    refs: int = 0
    pending_unload: bool = False


@dataclass(slots=True)
class Gen:
    """One generate/chat request after validation."""

    path: str
    model: str  # as sent (echoed in responses)
    spec: ModelSpec
    key: str
    stream: bool
    think: bool
    n_tokens: int
    done_reason: str
    keep_alive_ns: int
    context_length: int
    prompt_tokens: int
    raw: bool
    chat: bool
    delay_s: float = 0.0
    tool_calls: list[dict[str, Any]] | None = None
    start_ns: int = field(default_factory=time.monotonic_ns)


@dataclass(eq=False)
class LiveStream:
    """A stream being written (``GET /_standin/streams``): how far it got, and what its socket could not
    send yet. A client that stops reading makes a proxy that honours flow control stop reading too;
    then the kernel's buffers fill, this process's own send buffer grows and the stream stops."""

    path: str
    model: str
    transport: asyncio.BaseTransport | None
    sent: int = 0

    def report(self) -> dict[str, Any]:
        transport = self.transport
        buffered = 0
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            buffered = transport.get_write_buffer_size()
        return {"path": self.path, "model": self.model, "tokens_sent": self.sent, "write_buffered": buffered}


class StandIn:
    """State plus request dispatch. Create one, then serve ``self.handle`` with aiohttp."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.installed: dict[str, Installed] = {}
        self.loaded: dict[str, Loaded] = {}
        self.requests: deque[tuple[str, str, str, Any, bytes, float]] = deque(maxlen=10_000)
        self.events: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.active = 0
        #: The streams being written now (the stand-in's own view of flow control).
        self.live: set[LiveStream] = set()
        self.busy = config.busy
        #: How many tokens each ``standin/gated`` stream may emit so far; waiters wake when it moves.
        self.gate = 0
        self._gate_moved = asyncio.Event()
        # Only the default catalogue answers for the unlisted dynamic models: a stand-in started with
        # --models has exactly those installed, as a real Ollama would.
        self.dynamic = config.models is None
        self.start_installed, self.start_loaded = start_models(config)
        self.hostname = socket.gethostname().lower()
        self.guard = config.host_guard and self._bound_to_loopback(config.host)
        self.routes: dict[str, dict[str, Handler]] = {
            "/": {"GET": self._root, "HEAD": self._root},
            "/api/version": {"GET": self._version, "HEAD": self._version},
            "/api/tags": {"GET": self._tags, "HEAD": self._tags},
            "/api/show": {"POST": self._show},
            "/api/ps": {"GET": self._ps},
            "/api/pull": {"POST": self._pull},
            "/api/delete": {"DELETE": self._delete},
            "/api/generate": {"POST": self._generate},
            "/api/chat": {"POST": self._chat},
            "/api/embed": {"POST": self._embed},
            "/api/embeddings": {"POST": self._embeddings},
            "/api/status": {"GET": self._status},
            "/api/push": {"POST": self._push},
            "/api/create": {"POST": self._create},
            "/api/copy": {"POST": self._copy},
            "/api/me": {"POST": self._unimplemented},
            "/api/signout": {"POST": self._unimplemented},
            "/v1/models": {"GET": self._v1_models},
            "/v1/chat/completions": {"POST": self._v1_chat},
            "/v1/completions": {"POST": self._v1_completions},
            "/v1/embeddings": {"POST": self._v1_embeddings},
            "/v1/responses": {"POST": self._v1_responses},
            "/v1/audio/transcriptions": {"POST": self._unimplemented},
            "/v1/messages": {"POST": self._v1_messages},
        }
        self._blob_route: dict[str, Handler] = {"POST": self._blob, "HEAD": self._blob}
        self.blobs: dict[str, int] = {}  # uploaded digests → size
        self._v1_model_route: dict[str, Handler] = {"GET": self._v1_model}
        self.reset()

    # ------------------------------------------------------------------ state helpers

    @staticmethod
    def _bound_to_loopback(host: str) -> bool:
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    def reset(self) -> None:
        """Back to the start-up models (installed and loaded) and busy state; recordings cleared."""
        self.installed.clear()
        self.loaded.clear()
        self.requests.clear()
        self.events.clear()
        self.blobs.clear()
        self.busy = self.config.busy
        self._open_gate(0)
        now = time.time_ns()
        for i, (key, spec) in enumerate(self.start_installed.items()):
            # Distinct, stable modification times: the start order is the tags order.
            self.installed[key] = Installed(spec, now - (i + 1) * 3_600_000_000_000)
        for key, spec in self.start_loaded.items():
            self.loaded[key] = Loaded(spec, now + DEFAULT_KEEP_ALIVE_NS, DEFAULT_NUM_CTX)

    def _dynamic(self, name: ModelName) -> ModelSpec | None:
        return dynamic_spec(name) if self.dynamic else None

    def _lookup(self, name: ModelName) -> ModelSpec | None:
        entry = self.installed.get(name.key)
        if entry is not None:
            return entry.spec
        return self._dynamic(name)

    def _event(self, kind: str, gen_path: str, model: str, tokens: int, **extra: Any) -> None:
        event = {
            "type": kind,
            "path": gen_path,
            "model": model,
            "tokens_sent": tokens,
            "t": time.monotonic(),
        }
        event.update(extra)
        self.events.append(event)

    def _host_allowed(self, hostport: str) -> bool:
        host = _split_host_port(hostport)
        if host is None:
            host = hostport
        ip_ok = _go_ip_ok(host)
        if ip_ok:
            return True
        low = host.lower()
        if low in ("", "localhost") or low == self.hostname:
            return True
        return low.endswith((".localhost", ".local", ".internal"))

    def _mark_loaded(self, key: str, spec: ModelSpec, keep_alive: int, ctx: int) -> int:
        """Reference the runner; returns the simulated load duration (ns)."""
        now = time.time_ns()
        entry = self.loaded.get(key)
        load_ns = 0
        if entry is None or entry.expires_ns < now:
            load_ns = 1_000_000 + (spec.size // 1000)
            entry = Loaded(spec, 0, ctx)
            self.loaded[key] = entry
        entry.refs += 1
        entry.context_length = ctx
        entry.expires_ns = now + max(keep_alive, 0) if keep_alive < FOREVER_NS else now + FOREVER_NS
        return load_ns

    def _release(self, key: str, keep_alive: int) -> None:
        entry = self.loaded.get(key)
        if entry is None:
            return
        entry.refs = max(entry.refs - 1, 0)
        now = time.time_ns()
        if keep_alive <= 0 or entry.pending_unload:
            if entry.refs == 0:
                del self.loaded[key]
            else:
                entry.pending_unload = True
            return
        entry.expires_ns = now + keep_alive if keep_alive < FOREVER_NS else now + FOREVER_NS

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_standin/"):
            return await self._introspect(request, path)
        raw = await body_of(request)
        if path.startswith(("/api/", "/v1/")):
            self.requests.append(
                (
                    request.method,
                    path,
                    request.query_string,
                    request.raw_headers,
                    raw,
                    time.monotonic(),
                )
            )
        if self.guard and not self._host_allowed(request.headers.get("Host", "")):
            return web.Response(status=403)
        methods = self.routes.get(path)
        if methods is None:
            if path.startswith("/api/blobs/") and len(path) > len("/api/blobs/"):
                methods = self._blob_route
            elif path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
                methods = self._v1_model_route
        if methods is None:
            return self._not_found(request, path)
        handler = methods.get(request.method)
        if handler is None:
            return _text(405, "405 method not allowed")
        return await handler(request, raw)

    def _not_found(self, request: web.BaseRequest, path: str) -> web.Response:
        # gin's RedirectTrailingSlash: only when the same method has the other spelling.
        if path != "/":
            other = path[:-1] if path.endswith("/") else path + "/"
            methods = self.routes.get(other)
            if methods is not None and request.method in methods:
                location = other + (f"?{request.query_string}" if request.query_string else "")
                code = 301 if request.method == "GET" else 307
                return web.Response(status=code, headers={"Location": location})
        return _text(404, "404 page not found")

    # ------------------------------------------------------------------ introspection

    async def _introspect(self, request: web.BaseRequest, path: str) -> web.StreamResponse:  # noqa: PLR0911
        method = request.method
        if path == "/_standin/requests":
            if method == "GET":
                return _json(200, [self._request_record(r) for r in list(self.requests)])
            if method == "DELETE":
                self.requests.clear()
                return _json(200, {"cleared": True})
        elif path == "/_standin/events":
            if method == "GET":
                return _json(200, list(self.events))
            if method == "DELETE":
                self.events.clear()
                return _json(200, {"cleared": True})
        elif path == "/_standin/active":
            if method == "GET":
                return _json(200, {"streams": self.active})
        elif path == "/_standin/streams":
            if method == "GET":
                return _json(200, [live.report() for live in self.live])
        elif path == "/_standin/reset":
            if method == "POST":
                self.reset()
                return _json(200, {"reset": True})
        elif path == "/_standin/gate":
            if method == "GET":
                return _json(200, {"tokens": self.gate})
            if method == "POST":
                return self._set_gate(await body_of(request))
        elif path == "/_standin/busy":
            if method == "GET":
                return _json(200, {"busy": self.busy})
            if method == "POST":
                return self._set_busy(await body_of(request))
        else:
            return _text(404, "404 page not found")
        return _text(405, "405 method not allowed")

    def _open_gate(self, tokens: int) -> None:
        """Let every ``standin/gated`` stream emit its tokens numbered below ``tokens`` (from 0)."""
        self.gate = tokens
        moved, self._gate_moved = self._gate_moved, asyncio.Event()
        moved.set()

    def _set_gate(self, raw: bytes) -> web.Response:
        """``{"tokens": n}``: the gated streams may emit their first ``n`` tokens (a test's release)."""
        try:
            tokens = msgspec.json.decode(raw, type=dict[str, int])["tokens"]
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
            return _json(400, {"error": 'expected {"tokens": <int>}'})
        self._open_gate(tokens)
        return _json(200, {"tokens": self.gate})

    def _set_busy(self, raw: bytes) -> web.Response:
        """``{"busy": true}``: answer as an Ollama whose queue is full until ``{"busy": false}``."""
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("busy"), bool):
            return _error(400, 'expected {"busy": true} or {"busy": false}')
        self.busy = body["busy"]
        return _json(200, {"busy": self.busy})

    @staticmethod
    def _request_record(
        rec: tuple[str, str, str, Any, bytes, float],
    ) -> dict[str, Any]:
        method, path, query, raw_headers, raw, t = rec
        headers: dict[str, str] = {}
        for name_b, value_b in raw_headers:
            name = name_b.decode("latin-1").lower()
            value = value_b.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body: Any = None
        if raw:
            try:
                body = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                body = None
        return {
            "method": method,
            "path": path,
            "query": query,
            "host": headers.get("host"),
            "headers": headers,
            "body": body,
            "raw_body": base64.b64encode(raw).decode(),
            "t": t,
        }

    # ------------------------------------------------------------------ simple routes

    async def _root(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        return _text(200, "Ollama is running", "text/plain; charset=utf-8")

    async def _version(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        return _json(200, {"version": self.config.version})

    async def _status(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        return _json(200, {"cloud": {"disabled": False, "source": "default"}})

    async def _unimplemented(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        return _error(501, f"the Ollama stand-in does not implement {request.method} {request.path}")

    async def _tags(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        entries = sorted(self.installed.values(), key=lambda e: e.modified_ns, reverse=True)
        models = []
        for entry in entries:
            spec = entry.spec
            details = spec.details()
            details["context_length"] = spec.context_length
            details["embedding_length"] = spec.embedding_length
            remote = {"remote_model": spec.remote_model, "remote_host": spec.remote_host} if spec.remote_host else {}
            models.append(
                {
                    "name": spec.name,
                    "model": spec.name,
                    **remote,
                    "modified_at": local_rfc3339(entry.modified_ns),
                    "size": spec.size,
                    "digest": spec.digest,
                    "details": details,
                    "capabilities": list(spec.capabilities),
                }
            )
        return _json(200, {"models": models})

    async def _ps(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        now = time.time_ns()
        for key in [k for k, v in self.loaded.items() if v.expires_ns < now and v.refs == 0]:
            del self.loaded[key]
        models = []
        for entry in sorted(self.loaded.values(), key=lambda e: e.expires_ns, reverse=True):
            spec = entry.spec
            models.append(
                {
                    "name": spec.name,
                    "model": spec.name,
                    "size": spec.size,
                    "digest": spec.digest,
                    "details": spec.details(),
                    "expires_at": local_rfc3339(entry.expires_ns),
                    "size_vram": spec.size,
                    "context_length": entry.context_length,
                }
            )
        return _json(200, {"models": models})

    async def _show(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            body = decode_request(raw, "api.ShowRequest", SHOW_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        model = body.get("model") or body.get("name") or ""
        if not model:
            return _error(400, "model is required")
        name = parse_name(model)
        if name is None:
            return _error(400, "invalid model name")
        spec = self._lookup(name)
        if spec is None:
            return _error(404, f"model '{name.short}' not found")
        entry = self.installed.get(name.key)
        modified = entry.modified_ns if entry else time.time_ns()
        resp: dict[str, Any] = {"license": spec.license, "modelfile": spec.modelfile}
        if spec.stop:
            resp["parameters"] = spec.parameters
        resp["template"] = spec.template
        resp["details"] = spec.details()
        resp["model_info"] = spec.model_info(verbose=bool(body.get("verbose")))
        resp["capabilities"] = list(spec.capabilities)
        resp["modified_at"] = local_rfc3339(modified)
        return _json(200, resp)

    async def _delete(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            body = decode_request(raw, "api.DeleteRequest", DELETE_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        model = body.get("model") or body.get("name") or ""
        if not model:
            return _error(400, "model is required")
        name = parse_name(model)
        if name is None:
            return _error(400, f"name {go_quote(model)} is invalid")
        if self.installed.pop(name.key, None) is None and self._dynamic(name) is None:
            return _error(404, f"model '{model}' not found")
        return web.Response(status=200)

    async def _v1_models(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        entries = sorted(self.installed.values(), key=lambda e: e.modified_ns, reverse=True)
        data = []
        for entry in entries:
            name = parse_name(entry.spec.name)
            data.append(
                {
                    "id": entry.spec.name,
                    "object": "model",
                    "created": entry.modified_ns // 1_000_000_000,
                    "owned_by": name.namespace if name else "library",
                }
            )
        return _json(200, {"object": "list", "data": data or None})

    async def _v1_model(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        model = request.path[len("/v1/models/") :]
        name = parse_name(model)
        spec = self._lookup(name) if name else None
        if name is None or spec is None:
            shown = name.short if name else model
            body = dumps(
                {
                    "error": {
                        "message": f"model '{shown}' not found",
                        "type": "not_found_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            return web.Response(status=404, body=body + b"\n", headers={"Content-Type": PLAIN_JSON})
        entry = self.installed.get(name.key)
        created = (entry.modified_ns if entry else time.time_ns()) // 1_000_000_000
        return _json(200, {"id": model, "object": "model", "created": created, "owned_by": name.namespace})

    # ------------------------------------------------------------------ pull

    async def _pull(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        self.active += 1
        try:
            return await self._pull_inner(request, raw)
        finally:
            self.active -= 1

    async def _pull_inner(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            body = decode_request(raw, "api.PullRequest", PULL_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        model = body.get("model") or body.get("name") or ""
        name = parse_name(model) if model else None
        if name is None:
            return _error(400, "invalid model name")
        stream = body.get("stream", True)
        spec = PULLABLE.get(name.key)
        present = name.key in self.installed
        step = self.config.pull_step_ms / 1000.0

        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if spec is None:
            lines.append({"error": ERR_PULL_MISSING})
        else:
            for digest, total in spec.layers:
                status = "pulling " + digest[7:19]
                if present:
                    lines.append({"status": status, "digest": digest, "total": total, "completed": total})
                    continue
                lines.append({"status": status, "digest": digest, "total": total})
                for part in range(1, 4):
                    lines.append(
                        {
                            "status": status,
                            "digest": digest,
                            "total": total,
                            "completed": total * part // 3,
                        }
                    )
            lines += [
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]

        self._event("stream_started", "/api/pull", model, 0, stream=stream)
        sent = 0
        resp: web.StreamResponse | None = None
        try:
            if stream:
                resp = web.StreamResponse(status=200, headers={"Content-Type": NDJSON_CT})
                resp.enable_chunked_encoding()
                await resp.prepare(request)
            for i, line in enumerate(lines):
                if i and step > 0:
                    await asyncio.sleep(step)
                if "error" not in line and line["status"] == "success" and spec is not None:
                    # The manifest is written: the model is now installed.
                    self.installed[name.key] = Installed(spec, time.time_ns())
                if resp is not None:
                    await resp.write(dumps(line) + b"\n")
                sent += 1
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            self._event("stream_cancelled", "/api/pull", model, sent, stream=stream)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return resp or web.Response(status=499)
        error = lines[-1].get("error")
        self._event("stream_completed", "/api/pull", model, sent, stream=stream, error=error)
        if resp is not None:
            await resp.write_eof()
            return resp
        if error is not None:
            return _error(500, error)
        return _json(200, lines[-1])

    # ------------------------------------------------------------------ embeddings

    @staticmethod
    def _vector(text: str, dims: int) -> list[float]:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        rng = random.Random(seed)  # deterministic, not security related
        vec = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [round(v / norm, 9) for v in vec]

    async def _embed_common(self, body: dict[str, Any], model: str) -> tuple[ModelSpec, ModelName] | web.Response:
        name = parse_name(model)
        if name is None:
            return _error(400, "invalid model name")
        spec = self._lookup(name)
        if spec is None:
            return _error(404, f"model {go_quote(model)} not found, try pulling it first")
        try:
            check_options(body.get("options"))
        except OptionError as exc:
            return _error(500, str(exc))
        if self.busy or spec.behaviour == "busy":
            return _error(503, ERR_BUSY)
        if spec.behaviour == "fail-before":
            return _error(500, ERR_RUNNER_STOPPED)
        keep_alive = body.get("keep_alive", DEFAULT_KEEP_ALIVE_NS)
        self._mark_loaded(name.key, spec, keep_alive, DEFAULT_NUM_CTX)
        self._release(name.key, keep_alive)
        return spec, name

    async def _embed(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        start = time.monotonic_ns()
        try:
            body = decode_request(raw, "api.EmbedRequest", EMBED_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        model = body.get("model", "")
        if not model:
            return _error(404, "model '' not found")
        raw_input = body.get("input")
        inputs: list[str]
        if raw_input is None or raw_input == "":
            inputs = []
        elif isinstance(raw_input, str):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(v, str) for v in raw_input):
            inputs = list(raw_input)
        else:
            return _error(400, "invalid input type")
        found = await self._embed_common(body, model)
        if isinstance(found, web.Response):
            return found
        spec, _ = found
        if not inputs:
            return _json(200, {"model": model, "embeddings": []})
        dims = spec.embedding_length
        wanted = body.get("dimensions")
        vectors = [self._vector(text, dims) for text in inputs]
        if isinstance(wanted, int) and 0 < wanted < dims:
            cut = []
            for vec in vectors:
                part = vec[:wanted]
                norm = math.sqrt(sum(v * v for v in part)) or 1.0
                cut.append([round(v / norm, 9) for v in part])
            vectors = cut
        total = max(time.monotonic_ns() - start, 1)
        prompt_tokens = sum(max(len(t.split()), 1) + 2 for t in inputs)
        return _json(
            200,
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": total,
                "load_duration": max(total // 10, 1),
                "prompt_eval_count": prompt_tokens,
            },
        )

    async def _embeddings(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            body = decode_request(raw, "api.EmbeddingRequest", EMBEDDINGS_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        model = body.get("model", "")
        if not model:
            return _error(400, "model is required")
        found = await self._embed_common(body, model)
        if isinstance(found, web.Response):
            return found
        spec, _ = found
        prompt = body.get("prompt", "")
        if not prompt:
            return _json(200, {"embedding": []})
        return _json(200, {"embedding": self._vector(prompt, spec.embedding_length)})

    # ------------------------------------------------------------------ generate / chat

    async def _generate(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        self.active += 1
        try:
            return await self._inference(request, raw, chat=False)
        finally:
            self.active -= 1

    async def _chat(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        self.active += 1
        try:
            return await self._inference(request, raw, chat=True)
        finally:
            self.active -= 1

    def _single(self, model: str, chat: bool, reason: str) -> web.Response:
        """The load/unload answer: one object, ``application/json`` even when streaming."""
        obj: dict[str, Any] = {"model": model, "created_at": utc_rfc3339()}
        if chat:
            obj["message"] = {"role": "assistant", "content": ""}
        else:
            obj["response"] = ""
        obj["done"] = True
        obj["done_reason"] = reason
        return _json(200, obj)

    async def _inference(  # noqa: PLR0911
        self, request: web.BaseRequest, raw: bytes, *, chat: bool, writer: Writer | None = None
    ) -> web.StreamResponse:
        path = request.path if writer is not None else ("/api/chat" if chat else "/api/generate")
        try:
            if chat:
                body = decode_request(raw, "api.ChatRequest", CHAT_FIELDS)
            else:
                body = decode_request(raw, "api.GenerateRequest", GENERATE_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))

        model: str = body.get("model", "")
        if not model:
            return _error(400, "model is required") if chat else _error(404, "model '' not found")
        name = parse_name(model)
        if name is None:
            return _error(400, "invalid model name")
        if not chat and body.get("raw") and any(body.get(k) for k in ("template", "system")):
            return _error(400, "raw mode does not support template, system, or context")
        if not chat and body.get("raw") and body.get("context"):
            return _error(400, "raw mode does not support template, system, or context")
        top_logprobs = body.get("top_logprobs", 0)
        if not 0 <= int(top_logprobs) <= 20:
            return _error(400, "top_logprobs must be between 0 and 20")
        spec = self._lookup(name)
        if spec is None:
            return _error(404, f"model '{model}' not found")

        if chat:
            messages = [m for m in body.get("messages") or [] if m is not None]
            empty = not messages
        else:
            messages = []
            empty = not body.get("prompt")
        keep_alive: int | None = body.get("keep_alive")
        if empty and keep_alive == 0:
            entry = self.loaded.get(name.key)
            if entry is not None:
                if entry.refs == 0:
                    del self.loaded[name.key]
                else:
                    entry.pending_unload = True
            return self._single(model, chat, "unload")

        caps = spec.capabilities
        if "completion" not in caps:
            verb = "chat" if chat else "generate"
            return _error(400, f"{go_quote(model)} does not support {verb}")
        if chat and body.get("tools") and "tools" not in caps:
            return _error(400, f"{name.full} does not support tools")
        if not chat and body.get("suffix") and "insert" not in caps:
            return _error(400, f"{name.full} does not support insert")
        think_value = body.get("think")
        if isinstance(think_value, str) and think_value not in ("low", "medium", "high", "max"):
            return _error(
                400,
                f"invalid think value: {go_quote(think_value)} "
                '(must be "high", "medium", "low", "max", true, or false)',
            )
        wants_think = think_value is not None and think_value is not False
        if wants_think and "thinking" not in caps:
            return _error(400, f"{go_quote(model)} does not support thinking")
        try:
            options = check_options(body.get("options"))
        except OptionError as exc:
            return _error(500, str(exc))
        if self.busy or spec.behaviour == "busy":
            return _error(503, ERR_BUSY)
        if spec.behaviour == "fail-before":
            return _error(500, ERR_RUNNER_STOPPED)

        stream = body.get("stream", True)
        if keep_alive is None:
            keep_alive = DEFAULT_KEEP_ALIVE_NS
        num_ctx = options.get("num_ctx", DEFAULT_NUM_CTX)
        if spec.behaviour == "hang":
            return await self._hang(request, path, model)

        if empty:
            self._mark_loaded(name.key, spec, keep_alive, num_ctx)
            self._release(name.key, keep_alive)
            return self._single(model, chat, "load")

        think = ("thinking" in caps) if think_value is None else wants_think
        num_predict = options.get("num_predict", -1)
        tool_calls = _scripted_tool_calls(body, messages) if chat and "tools" in caps else None
        answer = TOOL_CALL_TOKENS if tool_calls else spec.answer_tokens
        # The model stops by itself after its answer; a smaller num_predict cuts it short.
        if 0 < num_predict < answer:
            n_tokens, reason = num_predict, "length"
            tool_calls = None  # the call was never completed
        else:
            n_tokens, reason = spec.answer_tokens, "stop"
        if chat:
            chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))
        else:
            chars = len(body.get("prompt") or "") + len(body.get("system") or "")
        delay_ms = self.config.token_delay_ms or spec.token_delay_ms
        gen = Gen(
            path=path,
            model=model,
            spec=spec,
            key=name.key,
            stream=stream,
            think=think,
            n_tokens=n_tokens,
            done_reason=reason,
            keep_alive_ns=keep_alive,
            context_length=num_ctx,
            prompt_tokens=10 + chars // 4,
            raw=bool(body.get("raw")),
            chat=chat,
            delay_s=delay_ms / 1000.0,
            tool_calls=tool_calls,
        )
        load_ns = self._mark_loaded(name.key, spec, keep_alive, num_ctx)
        try:
            # The runner is loaded first; only the completion call finds it has no projector.
            if "vision" not in caps and _image_count(body, messages, chat):
                return _error(400, ERR_NO_MULTIMODAL)
            if stream and writer is not None:
                return await self._run_stream_compat(request, gen, load_ns, writer)
            if stream:
                return await self._run_stream(request, gen, load_ns)
            return await self._run_whole(gen, load_ns)
        finally:
            self._release(name.key, keep_alive)

    async def _hang(self, request: web.BaseRequest, path: str, model: str) -> web.StreamResponse:
        """Accept, then say nothing (not even headers) until the client goes away."""
        self._event("stream_started", path, model, 0)
        try:
            while True:
                await asyncio.sleep(0.05)
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
        except asyncio.CancelledError:
            self._event("stream_cancelled", path, model, 0)
            raise
        self._event("stream_cancelled", path, model, 0)
        return web.Response(status=499)

    def _pieces(self, gen: Gen) -> list[tuple[bool, str]]:
        """(is_thinking, text) in emission order."""
        out: list[tuple[bool, str]] = []
        if gen.think:
            out.extend((True, t) for t in _THINK_TOKENS)
        if not gen.tool_calls:  # a model that calls a tool says nothing else
            out.extend((False, _token(i)) for i in range(gen.n_tokens))
        return out

    def _final(
        self,
        gen: Gen,
        load_ns: int,
        gen_start: int,
        eval_count: int,
        content: str = "",
        thinking: str = "",
        *,
        whole: bool = True,
    ) -> dict[str, Any]:
        now = time.monotonic_ns()
        if gen.tool_calls:
            eval_count += TOOL_CALL_TOKENS
        total = max(now - gen.start_ns, 1) + load_ns
        obj: dict[str, Any] = {"model": gen.model, "created_at": utc_rfc3339()}
        if gen.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if gen.tool_calls and whole:  # a stream carried them in their own chunk
                message["tool_calls"] = gen.tool_calls
            obj["message"] = message
        else:
            obj["response"] = content
            if thinking:
                obj["thinking"] = thinking
        obj["done"] = True
        obj["done_reason"] = gen.done_reason
        if not gen.chat and not gen.raw:
            size = min(len(_CONTEXT_HEAD) + gen.prompt_tokens + eval_count, gen.context_length)
            obj["context"] = [*_CONTEXT_HEAD, *range(1000, 1000 + max(size - 3, 0))][:size]
        obj["total_duration"] = total
        obj["load_duration"] = max(load_ns, 1000)
        obj["prompt_eval_count"] = gen.prompt_tokens
        obj["prompt_eval_duration"] = gen.prompt_tokens * 250_000
        if eval_count:
            obj["eval_count"] = eval_count
            obj["eval_duration"] = max(now - gen_start, 1)
        return obj

    async def _pace(self, gen: Gen, index: int, t0: float) -> None:
        if gen.spec.behaviour == "gated":
            while index >= self.gate:
                await self._gate_moved.wait()
        elif gen.delay_s > 0:
            if index:
                wait = t0 + index * gen.delay_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
        elif index and index % 16 == 0:
            await asyncio.sleep(0)  # let other connections and disconnects get a turn

    async def _run_whole(self, gen: Gen, load_ns: int) -> web.StreamResponse:
        self._event("stream_started", gen.path, gen.model, 0, stream=False)
        gen_start = time.monotonic_ns()
        content: list[str] = []
        thinking: list[str] = []
        sent = 0
        t0 = time.monotonic()
        try:
            for i, (is_think, text) in enumerate(self._pieces(gen)):
                await self._pace(gen, i, t0)
                if gen.spec.behaviour == "fail-midstream" and len(content) == 3:
                    self._event(
                        "stream_completed", gen.path, gen.model, sent, stream=False,
                        error=ERR_MIDSTREAM,
                    )  # fmt: skip
                    return _error(500, ERR_MIDSTREAM)
                (thinking if is_think else content).append(text)
                sent += 1
        except asyncio.CancelledError:
            self._event("stream_cancelled", gen.path, gen.model, sent, stream=False)
            raise
        if gen.spec.behaviour == "fail-midstream":
            self._event("stream_completed", gen.path, gen.model, sent, stream=False, error=ERR_MIDSTREAM)
            return _error(500, ERR_MIDSTREAM)
        final = self._final(gen, load_ns, gen_start, sent, "".join(content), "".join(thinking))
        self._event("stream_completed", gen.path, gen.model, sent, stream=False, error=None)
        return _json(200, final)

    async def _run_stream(self, request: web.BaseRequest, gen: Gen, load_ns: int) -> web.StreamResponse:
        live = LiveStream(gen.path, gen.model, request.transport)
        self.live.add(live)
        try:
            return await self._write_stream(request, gen, load_ns, live)
        finally:
            self.live.discard(live)

    async def _write_stream(
        self, request: web.BaseRequest, gen: Gen, load_ns: int, live: LiveStream
    ) -> web.StreamResponse:
        self._event("stream_started", gen.path, gen.model, 0, stream=True)
        model_json = dumps(gen.model)
        if gen.chat:
            head = b'{"model":' + model_json + b',"created_at":"'
            content_mid = b'","message":{"role":"assistant","content":'
            think_mid = b'","message":{"role":"assistant","content":"","thinking":'
            tail = b'},"done":false}\n'
        else:
            head = b'{"model":' + model_json + b',"created_at":"'
            content_mid = b'","response":'
            think_mid = b'","response":"","thinking":'
            tail = b',"done":false}\n'
        sent = 0
        content_count = 0
        resp = web.StreamResponse(status=200, headers={"Content-Type": NDJSON_CT})
        resp.enable_chunked_encoding()
        gen_start = time.monotonic_ns()
        t0 = time.monotonic()
        try:
            await resp.prepare(request)
            for i, (is_think, text) in enumerate(self._pieces(gen)):
                await self._pace(gen, i, t0)
                if gen.spec.behaviour == "fail-midstream" and content_count == 3:
                    break
                token = _TOKEN_JSON.get(text) or dumps(text)
                stamp = utc_rfc3339().encode()
                mid = think_mid if is_think else content_mid
                await resp.write(head + stamp + mid + token + tail)
                sent += 1
                live.sent = sent
                if not is_think:
                    content_count += 1
            if gen.tool_calls:
                await resp.write(dumps(self._tool_chunk(gen)) + b"\n")
            if gen.spec.behaviour == "fail-midstream":
                await resp.write(dumps({"error": ERR_MIDSTREAM}) + b"\n")
                error: str | None = ERR_MIDSTREAM
            else:
                await resp.write(dumps(self._final(gen, load_ns, gen_start, sent, whole=False)) + b"\n")
                error = None
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            self._event("stream_cancelled", gen.path, gen.model, sent, stream=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return resp
        self._event("stream_completed", gen.path, gen.model, sent, stream=True, error=error)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    def _tool_chunk(self, gen: Gen) -> dict[str, Any]:
        """The stream object carrying the model's tool calls (content empty, not done)."""
        message = {"role": "assistant", "content": "", "tool_calls": gen.tool_calls}
        return {"model": gen.model, "created_at": utc_rfc3339(), "message": message, "done": False}

    def _native_piece(self, gen: Gen, is_think: bool, text: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": gen.model, "created_at": utc_rfc3339()}
        if gen.chat:
            message: dict[str, Any] = {"role": "assistant", "content": "" if is_think else text}
            if is_think:
                message["thinking"] = text
            obj["message"] = message
        else:
            obj["response"] = "" if is_think else text
            if is_think:
                obj["thinking"] = text
        obj["done"] = False
        return obj

    async def _run_stream_compat(
        self, request: web.BaseRequest, gen: Gen, load_ns: int, writer: Writer
    ) -> web.StreamResponse:
        """The native stream through a front door's writer (see :meth:`_write_stream_compat`)."""
        live = LiveStream(gen.path, gen.model, request.transport)
        self.live.add(live)
        try:
            return await self._write_stream_compat(request, gen, load_ns, writer, live)
        finally:
            self.live.discard(live)

    async def _write_stream_compat(
        self, request: web.BaseRequest, gen: Gen, load_ns: int, writer: Writer, live: LiveStream
    ) -> web.StreamResponse:
        """The native stream, each object handed to a front door's writer as Ollama's middleware does.

        A mid-stream failure is the native ``{"error": ...}`` line, which the writers decode as an
        empty, unfinished answer: the OpenAI writers emit one empty chunk, the Anthropic converter
        nothing, and none of them a ``[DONE]`` or ``message_stop`` (the stream just ends).
        """
        self._event("stream_started", gen.path, gen.model, 0, stream=True)
        sent = 0
        content_count = 0
        headers = {"Content-Type": EVENT_STREAM}
        if isinstance(writer, (AnthropicWriter, ResponsesWriter)):
            headers |= {"Cache-Control": "no-cache", "Connection": "keep-alive"}
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        gen_start = time.monotonic_ns()
        t0 = time.monotonic()
        error: str | None = None
        try:
            await resp.prepare(request)
            for i, (is_think, text) in enumerate(self._pieces(gen)):
                await self._pace(gen, i, t0)
                if gen.spec.behaviour == "fail-midstream" and content_count == 3:
                    break
                for frames in writer.flushes(self._native_piece(gen, is_think, text)):
                    await resp.write(frames)
                sent += 1
                live.sent = sent
                if not is_think:
                    content_count += 1
            if gen.tool_calls:
                for frames in writer.flushes(self._tool_chunk(gen)):
                    await resp.write(frames)
            if gen.spec.behaviour == "fail-midstream":
                last = writer.flushes({"error": ERR_MIDSTREAM})
                error = ERR_MIDSTREAM
            else:
                last = writer.flushes(self._final(gen, load_ns, gen_start, sent, whole=False))
            for frames in last:
                await resp.write(frames)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            self._event("stream_cancelled", gen.path, gen.model, sent, stream=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return resp
        self._event("stream_completed", gen.path, gen.model, sent, stream=True, error=error)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ front doors (/v1, Anthropic)

    @staticmethod
    def _compat_body(raw: bytes, go_type: str) -> dict[str, Any]:
        """The middleware's ``c.ShouldBindJSON``: no special case for an empty body (``EOF``)."""
        if not raw.strip(b" \t\r\n"):
            raise CompatError(400, "EOF")
        try:
            body = decode_json_body(raw, go_type)
        except DecodeError as exc:
            raise CompatError(400, str(exc)) from None
        return body or {}

    async def _through(
        self, request: web.BaseRequest, writer: Writer, native: dict[str, Any], *, chat: bool, sse_headers: bool = False
    ) -> web.StreamResponse:
        """Run a front door's request as the native one it becomes, written back by the door's writer.

        ``sse_headers``: the Anthropic and Responses middleware set ``Cache-Control``/``Connection``
        before the handler runs, so even an error answer to a stream request carries them.
        """
        self.active += 1
        try:
            answer = self._relay(writer, await self._inference(request, dumps(native), chat=chat, writer=writer))
        finally:
            self.active -= 1
        if sse_headers and not answer.prepared:
            answer.headers["Cache-Control"] = "no-cache"
            answer.headers["Connection"] = "keep-alive"
        return answer

    @staticmethod
    def _relay(writer: Writer, native: web.StreamResponse) -> web.StreamResponse:
        """A native answer that was not streamed, rewritten by the front door's writer."""
        if native.prepared or not isinstance(native, web.Response):
            return native  # streamed (already converted), or the client left
        raw = native.body if isinstance(native.body, bytes) else b""
        try:
            obj = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError:
            obj = {}
        if native.status != 200:
            message = obj.get("error", "") if isinstance(obj, dict) else raw.decode(errors="replace")
            body = writer.error_body(native.status, str(message))
            return web.Response(status=native.status, body=body, headers={"Content-Type": PLAIN_JSON})
        if writer.stream:
            return web.Response(status=200, body=writer.frames(obj), headers={"Content-Type": EVENT_STREAM})
        return web.Response(status=200, body=writer.whole(obj), headers={"Content-Type": PLAIN_JSON})

    async def _v1_chat(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            req = self._compat_body(raw, "openai.ChatCompletionRequest")
            if not req.get("messages"):
                raise CompatError(400, "[] is too short - 'messages'")
            native = to_native_chat(req)
        except CompatError as exc:
            return _json(exc.status, openai_error(exc.status, exc.message))
        options = req.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        writer = ChatWriter(stream=bool(req.get("stream")), include_usage=include_usage)
        return await self._through(request, writer, native, chat=True)

    async def _v1_completions(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            req = self._compat_body(raw, "openai.CompletionRequest")
            if "prompt" in req and not isinstance(req["prompt"], str):
                kind = go_kind(req["prompt"])
                raise CompatError(
                    400, f"json: cannot unmarshal {kind} into Go struct field CompletionRequest.prompt of type string"
                )
            native = to_native_completion(req)
        except CompatError as exc:
            return _json(exc.status, openai_error(exc.status, exc.message))
        options = req.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        writer = CompleteWriter(stream=bool(req.get("stream")), include_usage=include_usage)
        return await self._through(request, writer, native, chat=False)

    async def _v1_embeddings(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            req = self._compat_body(raw, "openai.EmbedRequest")
            encoding = req.get("encoding_format") or ""
            if encoding and encoding.lower() not in ("float", "base64"):
                raise CompatError(
                    400, f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64']."
                )
            value = req.get("input")
            if value == "":
                value = [""]
            if value is None or value == []:
                raise CompatError(400, "invalid input")
        except CompatError as exc:
            return _json(exc.status, openai_error(exc.status, exc.message))
        model = str(req.get("model", ""))
        native: dict[str, Any] = {"model": model, "input": value}
        if req.get("dimensions"):
            native["dimensions"] = req["dimensions"]
        answer = await self._embed(request, dumps(native))
        assert isinstance(answer, web.Response)
        raw_answer = answer.body if isinstance(answer.body, bytes) else b""
        obj = msgspec.json.decode(raw_answer)
        if answer.status != 200:
            body = dumps(openai_error(answer.status, obj.get("error", ""))) + b"\n"
            return web.Response(status=answer.status, body=body, headers={"Content-Type": PLAIN_JSON})
        body = embedding_list(model, obj, encoding)
        return web.Response(status=200, body=body, headers={"Content-Type": PLAIN_JSON})

    async def _v1_messages(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            req = self._compat_body(raw, "anthropic.MessagesRequest")
            if not req.get("model"):
                raise CompatError(400, "model is required")
            max_tokens = req.get("max_tokens")
            if not isinstance(max_tokens, int) or max_tokens <= 0:
                raise CompatError(400, "max_tokens is required and must be positive")
            if not req.get("messages"):
                raise CompatError(400, "messages is required")
            native = to_native_anthropic(req)
        except CompatError as exc:
            return _json(exc.status, anthropic_error(exc.status, exc.message))
        stream = bool(req.get("stream"))
        writer = AnthropicWriter(
            stream=stream, model=str(req["model"]), estimated_tokens=estimate_anthropic_tokens(req)
        )
        return await self._through(request, writer, native, chat=True, sse_headers=stream)

    async def _v1_responses(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            if request.headers.get("Content-Encoding") == "zstd":
                raw = unzstd(raw)
            req = self._compat_body(raw, "openai.ResponsesRequest")
            check_types(req)
            native = to_native_responses(req)
        except CompatError as exc:
            return _json(exc.status, openai_error(exc.status, exc.message))
        except UnsupportedToolError as exc:
            return _error(501, f"the Ollama stand-in does not implement the {exc} tool")
        writer = ResponsesWriter(req)
        return await self._through(request, writer, native, chat=True, sse_headers=writer.stream)

    # ------------------------------------------------------------------ model management

    async def _copy(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        try:
            body = decode_request(raw, "api.CopyRequest", COPY_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        source = str(body.get("source", ""))
        destination = str(body.get("destination", ""))
        src = parse_name(source)
        if src is None:
            return _error(400, f"source {go_quote(source)} is invalid")
        dst = parse_name(destination)
        if dst is None:
            return _error(400, f"destination {go_quote(destination)} is invalid")
        entry = self.installed.get(src.key)
        if entry is None:
            return _error(404, f"model {go_quote(source)} not found")
        self.installed[dst.key] = Installed(replace(entry.spec, name=dst.short), time.time_ns())
        return web.Response(status=200)

    async def _create(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        """``CreateHandler`` from an installed model: its layers reused, a manifest written."""
        try:
            body = decode_request(raw, "api.CreateRequest", CREATE_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        name = parse_name(str(body.get("model") or body.get("name") or ""))
        if name is None:
            return _error(400, ERR_INVALID_NAME)
        source = str(body.get("from") or "")
        lines: list[dict[str, Any]] = []
        status = 500
        if not source:
            lines.append({"error": "neither 'from' or 'files' was specified"})
            status = 400
        elif (src := parse_name(source)) is None:
            lines.append({"error": ERR_INVALID_NAME})
            status = 400
        elif (entry := self.installed.get(src.key)) is None:
            # parseFromModel pulls a missing base; the stand-in's registry has none of these names.
            lines += [{"status": "pulling manifest"}, {"error": ERR_PULL_MISSING}]
        else:
            lines += [{"status": f"using existing layer {digest}"} for digest, _ in entry.spec.layers]
            lines += [{"status": "writing manifest"}, {"status": "success"}]
            self.installed[name.key] = Installed(replace(entry.spec, name=name.short), time.time_ns())
        return await self._progress(request, body.get("stream", True), lines, status)

    async def _push(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:
        """``PushHandler``: the stand-in has no registry credentials, so every push is refused."""
        try:
            body = decode_request(raw, "api.PushRequest", PUSH_FIELDS)
        except RequestError as exc:
            return _error(400, str(exc))
        model = str(body.get("model") or body.get("name") or "")
        if not model:
            return _error(400, "model is required")
        name = parse_name(model)
        lines: list[dict[str, Any]] = [{"status": "retrieving manifest"}]
        if name is None or name.key not in self.installed:
            shown = name.full.replace(":", "/") if name else model
            lines += [
                {"status": "couldn't retrieve manifest"},
                {"error": f"open /root/.ollama/models/manifests/{shown}: no such file or directory"},
            ]
        else:
            lines.append({"error": "unauthorized: access denied"})
        return await self._progress(request, body.get("stream", True), lines, 500)

    async def _progress(
        self, request: web.BaseRequest, stream: object, lines: list[dict[str, Any]], error_status: int
    ) -> web.StreamResponse:
        """``streamResponse`` / ``waitForStream`` over a scripted list of progress lines."""
        # Both set ``Content-Type: application/json`` before gin's JSON render, so no charset.
        first_error = lines[0].get("error") if lines else None
        if stream is False or first_error is not None:
            last = lines[-1]
            status = error_status if "error" in last else 200
            return web.Response(status=status, body=dumps(last), headers={"Content-Type": PLAIN_JSON})
        resp = web.StreamResponse(status=200, headers={"Content-Type": NDJSON_CT})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for line in lines:
            await resp.write(dumps(line) + b"\n")
        await resp.write_eof()
        return resp

    async def _blob(self, request: web.BaseRequest, raw: bytes) -> web.StreamResponse:  # noqa: PLR0911
        digest = request.path[len("/api/blobs/") :]
        if not _BLOB_DIGEST.fullmatch(digest):
            return _error(400, "invalid digest format")
        canonical = "sha256:" + digest[7:].lower()
        if len(raw) > MAX_BLOB_BYTES:  # the stand-in keeps nothing big in memory; Ollama has no limit
            return _error(413, f"the Ollama stand-in accepts blobs up to {MAX_BLOB_BYTES} bytes")
        if request.method == "HEAD":
            if canonical in self.blobs or canonical in self._layer_digests():
                return web.Response(status=200)
            return _error(404, f"blob {go_quote(digest)} not found")
        if canonical in self.blobs or canonical in self._layer_digests():
            return web.Response(status=200)
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != digest:
            return _error(400, f"digest mismatch, expected {go_quote(digest)}, got {go_quote(got)}")
        if len(self.blobs) >= MAX_BLOBS:
            self.blobs.pop(next(iter(self.blobs)))
        self.blobs[canonical] = len(raw)
        return web.Response(status=201)

    def _layer_digests(self) -> set[str]:
        return {digest for entry in self.installed.values() for digest, _ in entry.spec.layers}


TOOL_CALL_TOKENS: Final = 12
MAX_BLOBS: Final = 256
MAX_BLOB_BYTES: Final = 16 * 1024 * 1024
_BLOB_DIGEST: Final = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def _scripted_tool_calls(body: dict[str, Any], messages: list[Any]) -> list[dict[str, Any]] | None:
    """The stand-in's deterministic tool use: offered tools and a user's turn → call the first tool.

    Arguments fill each declared property with a value of its type, in declaration order; the id is
    Ollama's ``toolCallId`` shape (``call_`` + 8 lower-case letters or digits, server/routes.go:2305-2312).
    """
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    last = messages[-1] if messages else None
    if not tools or not isinstance(last, dict) or last.get("role") != "user":
        return None
    fn = tools[0].get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties") if isinstance(params, dict) else None
    samples = {"string": "Paris", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    arguments: dict[str, Any] = {}
    for key, schema in (props or {}).items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(kind, list):
            kind = kind[0] if kind else None
        arguments[key] = samples.get(str(kind), "Paris")
    call_id = "call_" + "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=8))
    return [{"id": call_id, "function": {"index": 0, "name": str(fn.get("name", "")), "arguments": arguments}}]
