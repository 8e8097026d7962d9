"""The application factory: settings in, a wired Litestar app out, no import-time side effects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from minato import __version__
from minato.auth.keyring import Keyring
from minato.core.admission import Admission
from minato.core.policy import Policy
from minato.observability.logging import AccessLog, configure_logging, log_request
from minato.observability.metrics import Metrics
from minato.settings import Settings
from minato.state.protocols import Affinity, Quota, RateLimiter
from minato.upstream.pool.facade import OllamaPool
from minato.upstream.ports import Upstream
from minato.web.api import HANDLER_DEPENDENCIES, ROUTE_HANDLERS
from minato.web.api.common import before_handler
from minato.web.auth import PUBLIC, Guard, make_caller_provider, make_guard
from minato.web.doors import DOOR_HANDLERS
from minato.web.keywatch import KeyWatch
from minato.web.limit_headers import RATE_LIMIT_HEADERS, SERVER_TIMING, add_limit_headers
from minato.web.limits import BodyTimeout, QueryLengthLimit
from minato.web.middleware import RequestLogMiddleware
from minato.web.openapi import document_routes
from minato.web.pages.docs import docs_router, render_plugins
from minato.web.pages.playground import playground_router
from minato.web.rendering import EXCEPTION_HANDLERS
from minato.web.runtime import RuntimeSlot, UpstreamFactory, attach, settle_garbage_collector, started

API_DESCRIPTION: Final = (
    "Minato is an HTTP gateway in front of an Ollama daemon: plain GET requests for answers, "
    "streamed tokens, image questions and model management, without exposing Ollama itself.\n\n"
    "Generation parameters are forwarded only when set, so Ollama's and the model's own "
    "defaults apply otherwise. `numa` and `low_vram` are accepted for compatibility but current "
    "Ollama ignores them."
)
#: Where the API docs pages and the OpenAPI document are served.
DOCS_PATH: Final = "/docs"


def _before_request(guard: Guard | None) -> Callable[[Request[Any, Any, Any]], Awaitable[Response[None] | None]]:
    """The app's one ``before_request`` hook: the key check first, then :func:`before_handler`.

    The key check runs here rather than as a Litestar guard, which is handed a copy of the route
    handler on every call (about a fiftieth of a whole answer's CPU); it still runs before any
    parameter or body is read.
    """

    async def before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
        if guard is not None:
            await guard(request, request.route_handler)
        return await before_handler(request)

    return before_request


def create_app(
    settings: Settings | None = None,
    *,
    upstream: UpstreamFactory | None = None,
    limiter: RateLimiter | None = None,
    quota: Quota | None = None,
    configure_logs: bool | None = None,
) -> Litestar:
    """Build Minato.

    Args:
        settings: Service configuration; read from the environment when omitted.
        upstream: Builds the interface to Ollama instead of the real client (a test's fake).
        limiter: The rate limiter instead of the shared state's (asked for keys with a request rate).
        quota: The token quota instead of the shared state's (asked for keys with ``tokens_per_day``).
        configure_logs: Configure structlog and stdlib logging; by default only when the
            settings come from the environment (a served process), not when a test passes them.
    """
    served = settings is None
    if configure_logs is None:
        configure_logs = served
    settings = settings if settings is not None else Settings.from_env()
    # How the request line is written: through structlog (whatever a test configured), unless the
    # process's logging is configured here (directly for JSON: see configure_logging).
    access: AccessLog | None = configure_logging(settings) if configure_logs else log_request
    metrics = Metrics()
    keyring = Keyring.from_settings(settings)
    policy = Policy(settings, keyed=keyring.enabled)
    admission = Admission(
        settings.max_generations,
        settings.max_generations_per_model,
        settings.max_queue,
        settings.queue_timeout,
        metrics,
        key_max_concurrent=settings.key_max_concurrent,
    )
    build = upstream if upstream is not None else _real_client()
    slot = RuntimeSlot()
    keywatch = KeyWatch(keyring, policy, metrics)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        running = started(settings, metrics, admission, build, policy=policy, limiter=limiter, quota=quota)
        async with running as runtime, slot.holding(runtime), keywatch.watching():
            if served:
                settle_garbage_collector()
            yield

    app = Litestar(
        route_handlers=[*DOOR_HANDLERS, *ROUTE_HANDLERS, playground_router()],
        lifespan=[lifespan],
        # Handlers name what they need: a runtime field (provided once the app has started), the
        # caller, the generation options, or what the handlers share (the route's model, a generation).
        dependencies={
            **slot.providers(),
            "caller": Provide(make_caller_provider(keyring), sync_to_thread=False),
            "keyring": Provide(lambda: keyring, sync_to_thread=False),
            **HANDLER_DEPENDENCIES,
        },
        exception_handlers=EXCEPTION_HANDLERS,
        # A keyless deployment with a keys file gets the guard too: a reload may give it a key.
        before_request=_before_request(
            make_guard(settings, keyring, slot, policy) if keyring.enabled or keyring.files else None
        ),
        cors_config=_cors(settings),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Minato",
            version=__version__,
            description=API_DESCRIPTION,
            # The docs router is exempt from keys as a whole (the API description holds no secrets,
            # and a browser cannot send a key to it); the exemption travels with its handlers.
            # The pages' assets are Minato's own files, served by the same open router.
            openapi_router=docs_router(DOCS_PATH, opt={PUBLIC: True}, include_in_schema=False),
            components=Components(
                security_schemes={
                    "key": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                    "bearer": SecurityScheme(type="http", scheme="bearer"),
                }
            ),
            security=[{"key": []}, {"bearer": []}],
            render_plugins=render_plugins(DOCS_PATH),
        ),
        # Logging is configured once by configure_logging, not by Litestar's defaults.
        logging_config=None,
        debug=False,
    )
    # Outermost layer, around Litestar's own error handling, so routing errors and streams that
    # fail after their first byte are logged with the status the client actually got.
    attach(app, slot)
    app.state.keywatch = keywatch  # minato serve's SIGHUP handler asks it (minato.server.serving)
    document_routes(app)
    bounded = BodyTimeout(QueryLengthLimit(app.asgi_handler, settings.max_query_chars), settings.body_timeout)
    app.asgi_handler = RequestLogMiddleware(bounded, metrics, on_head=add_limit_headers, access=access)
    return app


def _real_client() -> UpstreamFactory:
    def build(settings: Settings, metrics: Metrics, affinity: Affinity | None) -> Upstream:
        return OllamaPool(settings, metrics, affinity)

    return build


#: What browsers may send: Minato's own headers, and those the OpenAI and Anthropic SDKs add in a
#: browser (Ollama's own CORS list carries the OpenAI ones), so their preflights succeed at the doors.
_CORS_HEADERS: Final = (
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "Content-Encoding",
    "Accept",
    "X-Request-ID",
    "OpenAI-Beta",
    "OpenAI-Organization",
    "OpenAI-Project",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
)


def _cors(settings: Settings) -> CORSConfig | None:
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=[*_CORS_HEADERS],
        # A browser's script reads only the headers listed here: the limits and timings too.
        expose_headers=["X-Request-ID", "Retry-After", *RATE_LIMIT_HEADERS, SERVER_TIMING],
        max_age=600,
    )
