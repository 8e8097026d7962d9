"""The playground's files: served without a key, under a strict policy, counted under bounded labels."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
import respx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from minato.app import create_app
from minato.pages import PLAYGROUND_DIRECTORY
from minato.settings import Settings

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
async def fx_keyed(settings: Settings, ollama: respx.MockRouter) -> AsyncIterator[Client]:
    app = create_app(
        msgspec.structs.replace(settings, admin_keys=(ADMIN,)), transport=httpx.MockTransport(ollama.async_handler)
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


def test_the_page_loads_nothing_from_another_origin() -> None:
    """Minato runs where there is no internet: every file the page needs is its own."""
    for file in PLAYGROUND_DIRECTORY.iterdir():
        text = file.read_text()
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), file.name
        assert "<script>" not in text, "an inline script would break under the page's own policy"
        assert " style=" not in text, "so would an inline style"


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
