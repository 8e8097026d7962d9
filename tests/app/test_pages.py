"""The pages Minato serves (the playground, the docs): served without a key, under a strict policy that
no other site may frame them, counted under bounded labels."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar, MediaType, get
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
ADMIN = "pages-admin-key"
FILES = {
    "/playground": "text/html",
    "/playground/": "text/html",
    "/playground/app.js": "text/javascript",
    "/playground/style.css": "text/css",
}


@pytest.fixture(name="keyed")
async def fx_keyed(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    app = create_app(
        msgspec.structs.replace(settings, admin_keys=(ADMIN,)),
    )
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.mark.parametrize(("path", "kind"), FILES.items())
async def test_the_page_and_its_files_are_served_without_a_key_under_a_strict_policy(
    keyed: Client, path: str, kind: str
) -> None:
    response = await keyed.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "connect-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_page_opens_nothing_but_the_api_to_anyone_without_a_key(keyed: Client) -> None:
    assert (await keyed.get("/models_list/")).status_code == 401
    assert (await keyed.post("/install/llama3.2")).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/playground/../pyproject.toml",
        "/playground/..%2F..%2Fapp.py",
        "/playground/%2e%2e/pages.py",
        "/playground/x.js",
    ],
)
async def test_only_the_pages_own_files_are_served(keyed: Client, path: str) -> None:
    response = await keyed.get(path)

    assert response.status_code in {401, 404}
    assert "import" not in response.text
    assert ".." not in response.text, "the path is not echoed"
    assert response.headers["content-type"].startswith("application/json")


async def test_the_pages_files_are_counted_under_two_routes_whatever_the_file(keyed: Client) -> None:
    for index in range(30):
        await keyed.get(f"/playground/invented-{index}.js")
    for path in FILES:
        await keyed.get(path)
    metrics = await keyed.get("/metrics", headers={"X-API-Key": ADMIN})

    routes = {
        sample.labels["route"]
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
        if sample.name == "minato_requests_total"
    }
    assert routes == {"/playground", "/playground/{file_path}"}


# -- every page, found from the app's routes -------------------------------------------------------------


def page_paths(app: Litestar) -> list[str]:
    """A path of each route that can answer a page: a GET handler answering HTML, or static files
    (whose directory index is a page), each path parameter filled (a file's left empty: the index)."""
    paths = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            static = handler.fn.__module__.startswith("litestar.static_files")
            if "GET" in handler.http_methods and (handler.media_type == MediaType.HTML or static):
                path = route.path
                for parameter in route.path_parameters.values():
                    path = path.replace(f"{{{parameter.full}}}", "" if parameter.type is Path else "page")
                paths.append(path)
    return paths


def page_header_problems(headers: httpx.Headers) -> list[str]:
    """What a page's headers lack: never framed (both ways of saying it), scripts from Minato only, no sniffing."""
    directives = {
        name: values
        for name, _, values in (d.strip().partition(" ") for d in headers.get("content-security-policy", "").split(";"))
    }
    problems = []
    if directives.get("frame-ancestors") != "'none'":
        problems.append("frame-ancestors 'none'")
    if headers.get("x-frame-options") != "DENY":
        problems.append("X-Frame-Options: DENY")
    if directives.get("script-src") != "'self'":
        problems.append("script-src 'self' only")
    if directives.get("default-src") != "'none'":
        problems.append("default-src 'none'")
    if headers.get("x-content-type-options") != "nosniff":
        problems.append("X-Content-Type-Options: nosniff")
    if headers.get("referrer-policy") != "no-referrer":
        problems.append("Referrer-Policy: no-referrer")
    return problems


async def unprotected_pages(client: Client) -> tuple[set[str], dict[str, list[str]]]:
    """Every page the app answers, and those whose headers lack something (with what they lack)."""
    assert isinstance(client.app, Litestar)
    pages: set[str] = set()
    lacking: dict[str, list[str]] = {}
    for path in page_paths(client.app):
        response = await client.get(path, headers={"X-API-Key": ADMIN})
        if response.headers.get("content-type", "").startswith("text/html"):
            pages.add(path)
            if problems := page_header_problems(response.headers):
                lacking[path] = problems
    return pages, lacking


async def test_every_page_minato_serves_forbids_framing_and_runs_only_its_own_scripts(keyed: Client) -> None:
    pages, lacking = await unprotected_pages(keyed)

    assert {"/docs", "/docs/scalar", "/playground", "/playground/"} <= pages, "the pages were found"
    assert lacking == {}


async def test_a_new_page_that_forgets_the_headers_is_found(settings: Settings, ollama: ServedOllama) -> None:
    @get("/new-page", media_type=MediaType.HTML, sync_to_thread=False)
    def new_page() -> str:
        return "<p>a page someone adds later</p>"

    app = create_app(
        msgspec.structs.replace(settings, admin_keys=(ADMIN,)),
    )
    app.register(new_page)
    async with AsyncTestClient(app=app) as client:
        pages, lacking = await unprotected_pages(client)

    assert "/new-page" in pages
    assert set(lacking) == {"/new-page"}
    assert "frame-ancestors 'none'" in lacking["/new-page"]


async def test_the_docs_pages_run_no_inline_script_and_only_scalar_allows_inline_styles(keyed: Client) -> None:
    swagger = await keyed.get("/docs")
    scalar = await keyed.get("/docs/scalar")

    for page in (swagger, scalar):
        for attributes in re.findall(r"<script([^>]*)>", page.text):
            assert "src=" in attributes or 'type="application/json"' in attributes, attributes
        assert "'unsafe-eval'" not in page.headers["content-security-policy"]
        assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "style-src 'self';" in swagger.headers["content-security-policy"]
    assert "style-src 'self' 'unsafe-inline';" in scalar.headers["content-security-policy"]


async def test_the_swagger_oauth2_redirect_page_is_not_served(keyed: Client) -> None:
    """Minato has no OAuth2: Litestar's redirect page for it (an inline script) would be a page for nothing."""
    response = await keyed.get("/docs/oauth2-redirect.html")

    assert response.status_code == 404
