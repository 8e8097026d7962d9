"""The API docs pages, ``/docs`` (Swagger UI) and ``/docs/scalar`` (Scalar), whole from Minato itself.

Minato often runs where there is no internet (next to GPUs in labs, on-premises networks), so the
pages load nothing from anywhere else: their scripts, styles and icon are pinned copies of npm
packages kept in the Python package (``static/docs``, written by ``make assets`` from
``assets/package.json``, described by its ``manifest.json``). Each package is served under a path
naming its version, so browsers may keep the files for good, and a new version is a new URL.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Final, NamedTuple

from litestar import Request, Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import OpenAPIRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

STATIC: Final = Path(__file__).parent / "static" / "docs"
#: Where the docs router serves the assets, below its own ``/docs``.
ASSETS_PATH: Final = "/assets"
#: A year, and ``immutable``: a file's URL names its package's version, so its bytes never change.
ASSET_CACHING: Final = CacheControlHeader(max_age=365 * 24 * 3600, public=True, immutable=True)
#: Scalar's options: no web fonts (they come from Scalar's servers), no telemetry.
SCALAR_CONFIGURATION: Final = {"withDefaultFonts": False, "telemetry": False}


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


def asset_url(docs_path: str, directory: str, file: str) -> str:
    """The URL of one vendored file, for a docs router mounted at ``docs_path``."""
    package = vendored()[directory]
    if file not in package.files:
        raise KeyError(f"{package.name} {package.version} has no vendored {file}")
    return f"{docs_path}{package.path}/{file}"


def assets_routers() -> list[Router]:
    """The routers serving the vendored files (they take the docs router's path and openness)."""
    return [
        create_static_files_router(
            package.path,
            directories=[STATIC / package.directory],
            name=f"docs-assets-{package.directory}",
            cache_control=ASSET_CACHING,
            include_in_schema=False,
        )
        for package in vendored().values()
    ]


def _page(title: str, head: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n{head}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode()


def _script_json(value: Any) -> str:
    """``value`` as JSON that cannot end the ``<script>`` element it is written in."""
    return json.dumps(value).replace("</", "<\\/")


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
            "<style>body { margin: 0 }</style>"
        )
        body = (
            '<div id="swagger-ui"></div>\n'
            f'<script src="{asset_url(url, "swagger-ui", "swagger-ui-bundle.js")}"></script>\n'
            f"<script>window.ui = SwaggerUIBundle({_script_json(options)});</script>"
        )
        return _page(openapi_schema["info"]["title"], head, body)


class ScalarPage(ScalarRenderPlugin):
    """Scalar from the vendored ``@scalar/api-reference``, reading the document from ``openapi.json``."""

    def __init__(self, docs_path: str, path: str = "/scalar") -> None:
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
            f'<script>Scalar.createApiReference("#app", {_script_json(configuration)});</script>'
        )
        return _page(openapi_schema["info"]["title"], head, body)


def render_plugins(docs_path: str) -> list[OpenAPIRenderPlugin]:
    """The docs pages of a docs router mounted at ``docs_path``: Swagger UI first (the router's root)."""
    return [SwaggerPage(docs_path), ScalarPage(docs_path)]
