"""The application factory: settings in, a wired Litestar app out, no import-time side effects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from minato import __version__
from minato.backpressure import Admission
from minato.fetch import ImageFetcher
from minato.handlers import ROUTE_HANDLERS
from minato.log import RequestLogMiddleware, configure_logging
from minato.metrics import Metrics
from minato.options import provide_generation_options
from minato.query import reject_repeated_parameters
from minato.rendering import EXCEPTION_HANDLERS
from minato.security import PUBLIC, Keyring, make_caller_provider, make_guard
from minato.sessions import SessionManager, open_store
from minato.settings import Settings
from minato.upstream import OllamaClient
from minato.upstream.catalog import ModelCatalog

UPSTREAM: Final = "upstream"
CATALOG: Final = "catalog"
SESSIONS: Final = "sessions"
FETCHER: Final = "fetcher"
API_DESCRIPTION: Final = (
    "Minato is an HTTP gateway in front of an Ollama daemon: plain GET requests for answers, "
    "streamed tokens, image questions and model management, without exposing Ollama itself.\n\n"
    "Generation parameters are forwarded only when set, so Ollama's and the model's own "
    "defaults apply otherwise. `numa` and `low_vram` are accepted for compatibility but current "
    "Ollama ignores them."
)


def create_app(
    settings: Settings | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    configure_logs: bool | None = None,
) -> Litestar:
    """Build Minato.

    Args:
        settings: Service configuration; read from the environment when omitted.
        transport: httpx transport for the calls to Ollama (tests pass a mock router's).
        configure_logs: Configure structlog and stdlib logging; by default only when the
            settings come from the environment (a served process), not when a test passes them.
    """
    if configure_logs is None:
        configure_logs = settings is None
    settings = settings if settings is not None else Settings.from_env()
    if configure_logs:
        configure_logging(settings)
    resources: dict[str, Any] = {}
    metrics = Metrics()
    keyring = Keyring.from_settings(settings)
    admission = Admission(
        settings.max_generations,
        settings.max_generations_per_model,
        settings.max_queue,
        settings.queue_timeout,
        metrics,
    )

    @asynccontextmanager
    async def ollama_pool(litestar: Litestar) -> AsyncIterator[None]:
        client = OllamaClient(settings, transport=transport)
        catalog = ModelCatalog(client)
        resources[UPSTREAM] = client
        resources[CATALOG] = catalog
        litestar.state.catalog = catalog  # for the checks that run before a handler's dependencies
        metrics.model_label = catalog.label
        await metrics.start_probe(catalog, settings.ollama_probe_interval)
        try:
            yield
        finally:
            await metrics.stop_probe()
            await client.aclose()

    @asynccontextmanager
    async def conversations(_: Litestar) -> AsyncIterator[None]:
        manager = SessionManager(open_store(settings.session_store), settings)
        await manager.start()
        resources[SESSIONS] = manager
        try:
            yield
        finally:
            await manager.stop()

    @asynccontextmanager
    async def image_fetcher(_: Litestar) -> AsyncIterator[None]:
        fetcher = ImageFetcher(settings)
        resources[FETCHER] = fetcher
        try:
            yield
        finally:
            await fetcher.aclose()

    app = Litestar(
        route_handlers=ROUTE_HANDLERS,
        lifespan=[ollama_pool, conversations, image_fetcher],
        # Handlers name what they need; lifespan-owned resources are looked up per request because
        # they only exist once the app has started.
        dependencies={
            "settings": Provide(lambda: settings, sync_to_thread=False, use_cache=True),
            "metrics": Provide(lambda: metrics, sync_to_thread=False, use_cache=True),
            "admission": Provide(lambda: admission, sync_to_thread=False, use_cache=True),
            "upstream": Provide(lambda: resources[UPSTREAM], sync_to_thread=False),
            "catalog": Provide(lambda: resources[CATALOG], sync_to_thread=False),
            "sessions": Provide(lambda: resources[SESSIONS], sync_to_thread=False),
            "fetcher": Provide(lambda: resources[FETCHER], sync_to_thread=False),
            "caller": Provide(make_caller_provider(keyring), sync_to_thread=False),
            "params": Provide(provide_generation_options, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=reject_repeated_parameters,
        guards=[make_guard(settings, keyring)] if keyring.enabled else [],
        cors_config=_cors(settings),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Minato",
            version=__version__,
            description=API_DESCRIPTION,
            # The docs router is exempt from keys as a whole (the API description holds no secrets,
            # and a browser cannot send a key to it); the exemption travels with its handlers.
            openapi_router=Router(path="/docs", route_handlers=[], opt={PUBLIC: True}, include_in_schema=False),
            components=Components(
                security_schemes={
                    "key": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                    "bearer": SecurityScheme(type="http", scheme="bearer"),
                }
            ),
            security=[{"key": []}, {"bearer": []}],
            render_plugins=[SwaggerRenderPlugin(path="/"), ScalarRenderPlugin(path="/scalar")],
        ),
        # Logging is configured once by configure_logging, not by Litestar's defaults.
        logging_config=None,
        debug=False,
    )
    # Outermost layer, around Litestar's own error handling, so routing errors and streams that
    # fail after their first byte are logged with the status the client actually got.
    app.asgi_handler = RequestLogMiddleware(app.asgi_handler, metrics, max_query_bytes=settings.max_query_chars)
    return app


def _cors(settings: Settings) -> CORSConfig | None:
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
