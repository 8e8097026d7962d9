"""The API docs pages, ``/docs`` (Swagger UI) and ``/docs/scalar`` (Scalar), whole from Minato itself.

Minato often runs where there is no internet (next to GPUs in labs, on-premises networks), so the
pages load nothing from anywhere else: their scripts, styles and icon are pinned copies of npm
packages kept in the Python package (``static/docs``, written by ``make assets`` from
``assets/package.json``, described by its ``manifest.json``). Each package is served under a path
naming its version, so browsers may keep the files for good, and a new version is a new URL.

The pages' own start is a file too (``static/docs-start``), reading the options the page carries as
JSON, so their policy runs scripts from Minato only; like every page of Minato they cannot be framed
by another site, since their Try-it-out sends the key typed into them.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any, Final, NamedTuple

from litestar import Request, Router
from litestar.datastructures import CacheControlHeader
from litestar.middleware import ASGIMiddleware
from litestar.openapi.plugins import OpenAPIRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from minato.web.pages.playground import content_security_policy, page_headers

STATIC: Final = Path(__file__).parent / "static" / "docs"
#: Minato's own files of the docs pages: what starts them, and Swagger UI's page margin.
START: Final = Path(__file__).parent / "static" / "docs-start"
#: Where the docs router serves the assets, below its own ``/docs``.
ASSETS_PATH: Final = "/assets"
#: A year, and ``immutable``: a file's URL names its package's version, so its bytes never change.
ASSET_CACHING: Final = CacheControlHeader(max_age=365 * 24 * 3600, public=True, immutable=True)
#: Scalar's API key field shows a joke as its placeholder (base64 of "ALL YOUR BASE ARE BELONG TO
#: US"), a fixed string in its bundle; a user could take it for a key to type.
_SCALAR_PLACEHOLDER_KEY: Final = "QUxMIFlPVVIgQkFTRSBBUkUgQkVMT05HIFRPIFVT"
#: Scalar's options. Everything below needs Scalar's servers, which a gateway next to GPUs often
#: cannot reach (and should not send its API description to): web fonts; telemetry; "Ask AI", a chat
#: run by Scalar; "Generate MCP"; the developer tools bar (Share, Deploy, Generate SDK, shown whenever
#: the page is on localhost); and "Open API Client", which opens client.scalar.com in a new tab (each
#: operation's "Test Request" stays: it runs in the page). The placeholder key is hidden with Scalar's
#: own ``customCss``.
SCALAR_CONFIGURATION: Final = {
    "withDefaultFonts": False,
    "telemetry": False,
    "agent": {"disabled": True},
    "mcp": {"disabled": True},
    "showDeveloperTools": "never",
    "hideClientButton": True,
    "customCss": f'input[placeholder="{_SCALAR_PLACEHOLDER_KEY}"]::placeholder {{ color: transparent; }}',
}
#: Swagger UI runs on Minato's files alone: scripts and styles from 'self', its icons as data: URLs,
#: and calls to Minato (Try it out).
SWAGGER_HEADERS: Final = page_headers(
    content_security_policy("script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'")
)
#: Scalar also writes its styles into the page as it renders (style elements made at run time, so no
#: hash can name them): inline styles, never inline scripts.
SCALAR_HEADERS: Final = page_headers(
    content_security_policy(
        "script-src 'self'", "style-src 'self' 'unsafe-inline'", "img-src 'self' data:", "connect-src 'self'"
    )
)
_SWAGGER_HEADER_LIST: Final = [(name.lower().encode(), value.encode()) for name, value in SWAGGER_HEADERS.items()]
_SCALAR_HEADER_LIST: Final = [(name.lower().encode(), value.encode()) for name, value in SCALAR_HEADERS.items()]
#: Scalar's page, below the docs router.
SCALAR_PATH: Final = "/scalar"


class Package(NamedTuple):
    """One vendored package: what it is, and the path its files are served under."""

    name: str
    version: str
    directory: str
    files: tuple[str, ...]

    @property
    def path(self) -> str:
        """The package's path below the docs router: its directory and version."""
        return f"{ASSETS_PATH}/{self.directory}-{self.version}"


@cache
def vendored() -> dict[str, Package]:
    """The vendored packages by directory (``swagger-ui``, ``scalar``), from the manifest."""
    packages = json.loads((STATIC / "manifest.json").read_text())["packages"]
    return {
        entry["directory"]: Package(name, entry["version"], entry["directory"], tuple(entry["files"]))
        for name, entry in packages.items()
    }


@cache
def start_path() -> str:
    """Where the docs router serves Minato's own files: a path naming their contents' digest, so they
    are cached for good like the packages' files, and an edited file is a new URL."""
    digest = hashlib.sha256()
    for file in sorted(START.iterdir()):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return f"{ASSETS_PATH}/minato-{digest.hexdigest()[:16]}"


def asset_url(docs_path: str, directory: str, file: str) -> str:
    """The URL of one vendored file, for a docs router mounted at ``docs_path``."""
    package = vendored()[directory]
    if file not in package.files:
        raise KeyError(f"{package.name} {package.version} has no vendored {file}")
    return f"{docs_path}{package.path}/{file}"


def assets_routers() -> list[Router]:
    """The routers serving the vendored files and Minato's own (they take the docs router's path and openness)."""
    return [
        *(
            create_static_files_router(
                package.path,
                directories=[STATIC / package.directory],
                name=f"docs-assets-{package.directory}",
                cache_control=ASSET_CACHING,
                include_in_schema=False,
            )
            for package in vendored().values()
        ),
        create_static_files_router(
            start_path(),
            directories=[START],
            name="docs-assets-minato",
            cache_control=ASSET_CACHING,
            include_in_schema=False,
        ),
    ]


class PageHeaders(ASGIMiddleware):
    """The docs router's security headers: Scalar's policy on Scalar's page, the strict one on the rest.

    A middleware rather than an ``after_request`` hook, which sees the response but not which page it is.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Serve the request, adding the page's headers to the response's start."""
        extra = _SCALAR_HEADER_LIST if SCALAR_PATH in scope["route_handler"].paths else _SWAGGER_HEADER_LIST

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await next_app(scope, receive, send_with_headers)


def _page(title: str, head: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n{head}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode()


def _start(ui: str, mount: str, options: dict[str, Any], docs_path: str) -> str:
    """The page's options as a JSON data block (never run), and Minato's script that starts the page on them."""
    # JSON puts ``<`` only inside strings, where \u003c means the same and cannot end the element.
    data = json.dumps({"ui": ui, "mount": mount, "options": options}).replace("<", "\\u003c")
    return (
        f'<script type="application/json" id="minato-docs">{data}</script>\n'
        f'<script src="{docs_path}{start_path()}/start.js"></script>'
    )


class SwaggerPage(SwaggerRenderPlugin):
    """Swagger UI from the vendored ``swagger-ui-dist``, reading the document from ``openapi.json``."""

    def __init__(self, docs_path: str, path: str = "/") -> None:
        super().__init__(path=path)
        self.docs_path = docs_path

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The page: Swagger UI's script and style, and its start (no validator badge: it calls out)."""
        url = self.docs_path
        options = {
            "url": self.get_openapi_json_route(request),
            "dom_id": "#swagger-ui",
            "deepLinking": True,
            "validatorUrl": None,
        }
        head = (
            f'<link rel="icon" type="image/png" href="{asset_url(url, "swagger-ui", "favicon-32x32.png")}">\n'
            f'<link rel="stylesheet" href="{asset_url(url, "swagger-ui", "swagger-ui.css")}">\n'
            f'<link rel="stylesheet" href="{url}{start_path()}/swagger.css">'
        )
        body = (
            '<div id="swagger-ui"></div>\n'
            f'<script src="{asset_url(url, "swagger-ui", "swagger-ui-bundle.js")}"></script>\n'
            f"{_start('swagger', '#swagger-ui', options, url)}"
        )
        return _page(openapi_schema["info"]["title"], head, body)

    def receive_router(self, router: Router) -> None:
        """Nothing: Litestar's Swagger plugin adds an OAuth2 redirect page here, and Minato has no OAuth2
        (that page would be one more page, with an inline script, for nothing)."""


class ScalarPage(ScalarRenderPlugin):
    """Scalar from the vendored ``@scalar/api-reference``, reading the document from ``openapi.json``."""

    def __init__(self, docs_path: str, path: str = SCALAR_PATH) -> None:
        super().__init__(path=path)
        self.docs_path = docs_path

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The page: Scalar's self-contained script (its styles are inside it), started on the document."""
        url = self.docs_path
        configuration = {"url": self.get_openapi_json_route(request), **SCALAR_CONFIGURATION}
        head = f'<link rel="icon" type="image/png" href="{asset_url(url, "swagger-ui", "favicon-32x32.png")}">'
        body = (
            '<div id="app"></div>\n'
            f'<script src="{asset_url(url, "scalar", "standalone.js")}"></script>\n'
            f"{_start('scalar', '#app', configuration, url)}"
        )
        return _page(openapi_schema["info"]["title"], head, body)


def render_plugins(docs_path: str) -> list[OpenAPIRenderPlugin]:
    """The docs pages of a docs router mounted at ``docs_path``: Swagger UI first (the router's root)."""
    return [SwaggerPage(docs_path), ScalarPage(docs_path)]


def docs_router(docs_path: str, **options: Any) -> Router:
    """The router of the docs pages, the document and the assets, sending the pages' headers."""
    return Router(path=docs_path, route_handlers=assets_routers(), middleware=[PageHeaders()], **options)
