"""Service configuration: one frozen Struct, read from the environment once at start-up."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from minato.errors import SettingsError
from minato.ollama.options import check_option, keep_alive_seconds, parse_keep_alive

PREFIX: Final = "MINATO_"
#: Variables under the prefix that belong to the test suite, not to the service.
TEST_ONLY_PREFIXES: Final = ("MINATO_LIVE_",)
#: Variables under the prefix that docker-compose.yml reads from ``.env`` to publish the port; its
#: ``env_file`` hands the whole ``.env`` to the container too, so Minato meets them and leaves them.
COMPOSE_VARIABLES: Final = frozenset({"MINATO_PUBLISH_ADDRESS", "MINATO_PUBLISH_PORT"})
DEFAULT_OLLAMA_URL: Final = "http://127.0.0.1:11434"
OLLAMA_DEFAULT_PORT: Final = 11434

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything Minato can be told from its environment (``MINATO_<FIELD>``).

    Each field's docstring is its meaning in docs/settings.md and .env.example, which ``make docs`` writes
    from this class (its links are relative to docs/).
    """

    host: str = "127.0.0.1"
    """Address the HTTP server binds to (``0.0.0.0`` in the container image)."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    """TCP port the HTTP server listens on."""
    workers: PositiveInt = 1
    """Server worker processes (each holds its own connection pool to Ollama). Several share their turn locks, rate
    limits and quotas through the SQLite session store or Redis; with ``memory://`` and no ``MINATO_REDIS_URL`` more
    than one is refused."""
    ollama_url: str = DEFAULT_OLLAMA_URL
    """Ollama's base URL, or several comma-separated: a pool of backends, each named ``host:port`` (see [Scaling
    out](scaling.md)). When unset, Ollama's own ``OLLAMA_HOST`` is used, including its ``host:port`` and ``:port``
    shorthands."""
    backend_parallel: PositiveInt = 4
    """Generations of one model a backend that has it loaded takes before the next request for that model spills to a
    backend where it is only installed (with a pool of backends)."""
    backend_failures: PositiveInt = 3
    """Failures in a row (refused connection, connection error, Ollama's "server busy") after which a backend is taken
    out of the pool for ``MINATO_BACKEND_COOLDOWN`` seconds."""
    backend_cooldown: PositiveFloat = 15.0
    """Seconds a failing backend stays out of the pool before the probe may bring it back."""
    redis_url: str = ""
    """A Redis or Valkey URL (``redis://host:6379/0``, ``rediss://`` for TLS) that replicas share their state in:
    conversations, turn leases, rate limits, token quotas, session-to-backend affinity. Empty: the embedded store
    (``MINATO_SESSION_STORE``), shared by the workers of one machine."""
    redis_timeout: PositiveFloat = 2.0
    """Seconds a Redis call may take; beyond it (or with Redis unreachable) a request that needs Redis is a 503 with
    ``Retry-After``."""
    turn_lease: PositiveFloat = 30.0
    """Seconds a conversation's turn lease lives unless renewed; a running turn renews it every third of that, so a
    lease whose holder died (a crashed replica) frees the conversation after this long."""
    ollama_headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Headers added to every request to Ollama, as a JSON object, for an Ollama behind its own auth, e.g.
    ``{"Authorization": "Bearer <token>"}``; the client's own keys never reach Ollama."""
    allow_cloud: bool = False
    """Let keys use Ollama's cloud models (``:cloud``/``-cloud``) and, with an admin key, its account routes."""
    api_keys: tuple[str, ...] = ()
    """Comma-separated user keys (plain, or ``sha256:<hex>`` of the key): may generate and read."""
    api_keys_file: str = ""
    """File with one user key per line (plain or ``sha256:<hex>``; ``#`` starts a comment)."""
    admin_keys: tuple[str, ...] = ()
    """Comma-separated admin keys: may also install, delete, load and unload models."""
    metrics_keys: tuple[str, ...] = ()
    """Comma-separated scrape keys (plain or ``sha256:<hex>``): they may read ``/metrics`` and nothing else.
    ``/metrics`` names every key and what it generated, so it needs an admin key or one of these (see
    [``GET /metrics``](observability.md#get-metrics--prometheus-metrics))."""
    keys_file: str = ""
    """TOML file of named keys, each with its role, the models it may use, and its own request rate and daily token
    quota (see [Named keys, scopes and quotas](security.md#named-keys-scopes-and-quotas))."""
    auth: Literal["auto", "disabled"] = "auto"
    """With no key configured, ``auto`` serves only on a loopback address and refuses to start on any other;
    ``disabled`` serves keyless anywhere (compose sets it, publishing on 127.0.0.1). Configured keys are always
    required."""
    open_probes: bool = False
    """Serve ``/ready`` and ``/metrics`` without a key (``/health`` never needs one)."""
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Requests per minute per key (0: no limit); beyond it 429 with ``Retry-After``."""
    cors_origins: tuple[str, ...] = ()
    """Comma-separated origins browsers may call Minato from (``*`` for any); empty: CORS off."""
    max_generations: PositiveInt = 1024
    """Generations (answers and streams) running at once; more wait in the queue."""
    max_generations_per_model: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Generations running at once on one model (the seeds' "concurrency"; 0: only the overall bound)."""
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 1024
    """Generations allowed to wait for a slot; beyond it 503 with ``Retry-After``."""
    queue_timeout: PositiveFloat = 60.0
    """Seconds a generation may wait for a slot before it is refused with 503."""
    key_max_concurrent: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Generations one key may run at once, for every key the keys file gives no ``max_concurrent`` (0: no bound);
    more wait their key's turn in the queue. Holds across workers and replicas (see
    [Fair sharing](scaling.md#fair-sharing-between-keys))."""
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Seconds running streams may take to finish after SIGTERM before they are closed."""
    max_query_chars: PositiveInt = 65_536
    """Longest accepted query string, in bytes as sent (414 beyond)."""
    header_timeout: PositiveFloat = 10.0
    """Seconds a client connection may take to send a complete request head (request line and headers); beyond it the
    connection gets a 408 and is closed."""
    max_client_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Open client connections one worker accepts (0: automatic, half the open-file limit); beyond it a new connection
    gets a 503 and is closed at once. Connections to Ollama are ``MINATO_MAX_CONNECTIONS``."""
    connect_timeout: PositiveFloat = 5.0
    """Seconds to open a connection to Ollama before answering 503."""
    first_token_timeout: PositiveFloat = 300.0
    """Seconds to wait for Ollama's first token (long enough for a cold model load) before answering 504."""
    idle_timeout: PositiveFloat = 120.0
    """Seconds a running stream may stay silent between two tokens before it is ended as failed."""
    request_timeout: PositiveFloat = 600.0
    """Seconds a whole answer may take: beyond it a non-streamed answer is a 504 and a stream ends with an error event
    (or an aborted plain-text body)."""
    control_timeout: PositiveFloat = 30.0
    """Seconds for Ollama's bookkeeping calls (model list, model details, version)."""
    max_connections: PositiveInt = 1024
    """Most simultaneous connections to each Ollama backend from one worker (kept alive for reuse; requests beyond
    it wait their turn)."""
    max_message_chars: PositiveInt = 32_000
    """Longest accepted ``message`` / ``system_prompt``, in characters (422 beyond). In a query string the message is
    URL-encoded (up to 12 bytes a character), so ``MINATO_MAX_QUERY_CHARS`` may bite first: a 414, like every request
    line too long for Minato, never the HTTP server's plain-text 400."""
    max_image_bytes: PositiveInt = 20 * 1024 * 1024
    """Largest accepted image, in bytes (413 beyond)."""
    max_images: PositiveInt = 8
    """Most images in one vision request (422 beyond)."""
    max_body_bytes: PositiveInt = 200 * 1024 * 1024
    """Largest accepted request body, in bytes (413 beyond)."""
    body_timeout: PositiveFloat = 60.0
    """Seconds any request may take to send its body, counted from when Minato first reads it (a vision upload is read
    only once it holds a generation slot, so queued uploads wait outside Minato's memory); beyond it 408 in the route's
    shape, and the connection is closed."""
    image_fetch_timeout: PositiveFloat = 10.0
    """Seconds to download one ``image_url`` (connect, redirects and body together)."""
    image_fetch_allow: tuple[str, ...] = ()
    """Comma-separated host names ``image_url`` may fetch from even when they resolve to private or loopback addresses
    (e.g. an internal image store); every other non-public address is refused."""
    image_fetch_max_redirects: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    """Redirects followed per ``image_url``; every hop is checked like the first."""
    capabilities_ttl: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    """Seconds a model's capabilities (from Ollama's ``/api/show``) are cached."""
    session_store: str = "minato.db"
    """Where conversations are kept: a SQLite file (created on first start, mode ``0600``, WAL mode; a directory Minato
    has to create for it is ``0700``; ``/data/minato.db`` on the compose volume in the container) or ``memory://`` for
    throwaway use."""
    session_max_messages: Annotated[int, msgspec.Meta(ge=2)] = 200
    """Messages kept per conversation; the oldest user/assistant pairs are dropped first (the system prompt never)."""
    session_ttl: PositiveFloat = 7 * 24 * 3600.0
    """Seconds of inactivity (7 days) after which a whole conversation is forgotten."""
    max_sessions: PositiveInt = 10_000
    """Conversations kept across all keys; beyond it the key holding the most loses its least recently active ones
    (ties: the key whose least recently active conversation is the oldest), so a key that floods the store evicts only
    its own."""
    max_sessions_per_key: PositiveInt = 1000
    """Conversations one key may keep; a new one beyond it makes that key, and no other, lose its least recently active
    ones. The keyless owner ``""`` (everyone, when no keys are configured) is bound only by ``MINATO_MAX_SESSIONS``."""
    session_image_bytes: Annotated[int, msgspec.Meta(ge=0)] = 32 * 1024 * 1024
    """Image bytes (base64) kept per conversation for follow-up questions; the oldest images are dropped first, their
    text stays."""
    store_image_bytes: Annotated[int, msgspec.Meta(ge=0)] = 2 * 1024 * 1024 * 1024
    """Image bytes (base64) kept across all conversations together; beyond it the oldest images in the whole store are
    dropped first, their text stays."""
    default_options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Server-wide generation defaults, a JSON object with the query parameter names, e.g.
    ``{"temperature": 0.7, "max_new_tokens": 512}``; validated at start-up; a request's own value wins."""
    default_keep_alive: float | str | None = None
    """``keep_alive`` sent when a request has none (seconds or a duration such as ``30m``); unset: Ollama's default."""
    user_max_keep_alive: float | str = "1h"
    """Longest ``keep_alive`` a user key may ask for (seconds or a duration); a user key's ``keep_alive`` must be
    from 1 s up to this, and ``0`` (unload now), negative (forever) or longer values need an admin key (403)."""
    user_max_num_ctx: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    """Largest ``num_ctx`` a user key may ask for (a larger one needs an admin key: 403); 0: the model's own context
    length (131072 when Ollama reports none)."""
    ollama_probe_interval: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    """Seconds between probes of each backend: its health (``minato_ollama_up``, ``minato_backend_up``) and its
    installed and loaded models (0: off; then only Minato's own actions refresh them)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest log level written."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """``json`` lines, a human ``console`` format, or ``auto``: console on a terminal, JSON otherwise."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``MINATO_*`` variables; raise :class:`SettingsError` naming the culprit."""
        env = os.environ if environ is None else environ
        known = setting_variables()
        raw: dict[str, str] = {}
        for key, value in env.items():
            if not meant_for_minato(key):
                continue
            if key not in known:
                raise SettingsError(not_a_setting(key))
            raw[known[key]] = value.strip()
        lists = {name: comma_separated(raw[name]) for name in _LIST_FIELDS if name in raw}
        if "default_options" in raw:
            try:
                raw["default_options"] = msgspec.json.decode(raw["default_options"] or "{}")
            except msgspec.DecodeError as exc:
                raise SettingsError(f"{PREFIX}DEFAULT_OPTIONS: not a JSON object ({exc})") from None
        if "ollama_headers" in raw:
            raw["ollama_headers"] = _checked_headers(raw["ollama_headers"])
        if "ollama_url" not in raw and env.get("OLLAMA_HOST", "").strip():
            raw["ollama_url"] = env["OLLAMA_HOST"]
            source_of_url = "OLLAMA_HOST"
        else:
            source_of_url = f"{PREFIX}OLLAMA_URL"
        try:
            settings = msgspec.convert({**raw, **lists}, type=cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_name_the_variable(str(exc))) from None
        try:
            url = ",".join(normalize_ollama_urls(settings.ollama_url))
        except ValueError as exc:
            raise SettingsError(f"{source_of_url}: {exc}") from None
        return msgspec.structs.replace(
            settings,
            ollama_url=url,
            default_options=_checked_defaults(settings.default_options),
            default_keep_alive=_checked_keep_alive(settings.default_keep_alive),
            user_max_keep_alive=_checked_user_keep_alive(settings.user_max_keep_alive),
        )

    @property
    def ollama_urls(self) -> tuple[str, ...]:
        """The backends' base URLs, in the order given (one for a single Ollama)."""
        return tuple(url for url in self.ollama_url.split(",") if url) or (DEFAULT_OLLAMA_URL,)


def setting_variables() -> dict[str, str]:
    """Each setting's variable name (``MINATO_PORT``), with its field name (``port``)."""
    return {f"{PREFIX}{name.upper()}": name for name in Settings.__struct_fields__}


def meant_for_minato(name: str) -> bool:
    """Whether a variable is under Minato's prefix and not one of the test suite's or compose's."""
    return name.startswith(PREFIX) and not name.startswith(TEST_ONLY_PREFIXES) and name not in COMPOSE_VARIABLES


def not_a_setting(name: str) -> str:
    """Why ``name`` is refused, with the setting it most looks like."""
    # Compared without the prefix they all share, which would make any two names look alike.
    fields = [variable.removeprefix(PREFIX) for variable in setting_variables()]
    hint = difflib.get_close_matches(name.removeprefix(PREFIX), fields, n=1)
    suggestion = f" (did you mean {PREFIX}{hint[0]}?)" if hint else ""
    return f"{name} is not a Minato setting{suggestion}"


#: Settings holding several values, written ``a,b,c`` in the environment.
_LIST_FIELDS: Final = frozenset(
    field.name for field in msgspec.structs.fields(Settings) if field.type == tuple[str, ...]
)


def comma_separated(value: str) -> tuple[str, ...]:
    """Split ``"a, b,,c"`` into ``("a", "b", "c")``: items trimmed, empty ones dropped."""
    return tuple(item for item in (part.strip() for part in value.split(",")) if item)


_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers Minato sets itself on a request to Ollama; an operator's value could only break the request.
_OWN_HEADERS: Final = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


def _checked_headers(text: str) -> Any:
    variable = f"{PREFIX}OLLAMA_HEADERS"
    try:
        headers = msgspec.json.decode(text or "{}", type=dict[str, str])
    except msgspec.DecodeError as exc:
        raise SettingsError(f"{variable}: not a JSON object of strings ({exc})") from None
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _OWN_HEADERS:
            raise SettingsError(f"{variable}: {name!r} cannot be set (a header name Minato does not set itself)")
        if "\r" in value or "\n" in value:
            raise SettingsError(f"{variable}: the value of {name!r} must be one line")
    return headers


def _checked_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    checked = {}
    for name, value in defaults.items():
        try:
            checked[name] = check_option(name, value)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}DEFAULT_OPTIONS: {name} {exc}") from None
    return checked


def _checked_keep_alive(value: float | str | None) -> float | str | None:
    if value is None or value == "":  # empty, as .env.example shows it: unset
        return None
    try:
        return parse_keep_alive(str(value))
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}DEFAULT_KEEP_ALIVE: {exc}") from None


def _checked_user_keep_alive(value: float | str) -> float | str:
    try:
        parsed = parse_keep_alive(str(value))
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}USER_MAX_KEEP_ALIVE: {exc}") from None
    if keep_alive_seconds(parsed) < 1:
        raise SettingsError(f"{PREFIX}USER_MAX_KEEP_ALIVE: must be at least 1 second")
    return parsed


def _name_the_variable(message: str) -> str:
    """Rewrite msgspec's ``... - at `$.port``` into ``MINATO_PORT: ...``."""
    text, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{PREFIX}{path.rstrip('`').upper()}: {text}"


def normalize_ollama_urls(value: str) -> tuple[str, ...]:
    """Normalize a comma-separated list of Ollama addresses (see :func:`normalize_ollama_url`); the same
    backend named twice is refused (it would be counted as two)."""
    urls = tuple(normalize_ollama_url(part) for part in comma_separated(value)) or (DEFAULT_OLLAMA_URL,)
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise ValueError(f"{url} is listed twice")
        seen.add(url)
    return urls


def normalize_ollama_url(value: str) -> str:
    """Turn an Ollama address into a base URL the way Ollama's own clients read ``OLLAMA_HOST``.

    ``host``, ``host:port``, ``:port`` and full URLs are accepted; a missing port is Ollama's
    11434 unless a scheme is given (then the scheme's default). ``0.0.0.0`` is a bind address,
    not a destination, so it becomes loopback as Ollama's Go client does.
    """
    text = value.strip()
    if not text:
        return DEFAULT_OLLAMA_URL
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"http://{text}")
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {value!r} (use http or https)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} must be a plain base URL without credentials or query")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    host = parts.hostname or "127.0.0.1"
    if port is None:
        port = {"http": 80, "https": 443}[parts.scheme] if has_scheme else OLLAMA_DEFAULT_PORT
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        host = "127.0.0.1" if address.version == 4 else "::1"
    if ":" in host:
        host = f"[{host}]"
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{host}:{port}{path}"
