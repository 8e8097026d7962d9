"""The docs pages load only Minato's own files, and those are the pinned packages' files, byte for byte.

The copies under ``src/minato/web/pages/static/docs`` are committed; ``make install`` fetches the tarballs
``assets/package.json`` pins, so a copy edited by hand, a pin changed without ``make assets``, or a
registry serving other bytes for the same version fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Final

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from minato.web.pages.docs import START, STATIC, start_path, vendored
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]
PAGES: Final = ("/docs", "/docs/scalar")
CONTENT_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """Every ``src`` and ``href`` of a page, and the text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in {"src", "href"}]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.scripts.append(data)


def references(html: str) -> _References:
    parser = _References()
    parser.feed(html)
    return parser


@pytest.fixture(name="keyed")
async def fx_keyed(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """Minato with keys configured: the pages and their files must still need none."""
    app = create_app(
        msgspec.structs.replace(settings, api_keys=("docs-assets-test-key-000000000001",)),
    )
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.mark.parametrize("page", PAGES)
async def test_a_docs_page_references_only_minatos_own_files(keyed: Client, page: str) -> None:
    response = await keyed.get(page)
    found = references(response.text)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert found.urls, "the page loads its scripts from somewhere"
    for url in found.urls:
        assert url.startswith("/docs/assets/"), url  # a path on Minato: no scheme, no other host
        assert not url.startswith("//"), url
    for script in found.scripts:  # what the page starts with: the document's path, no other address
        assert "http:" not in script
        assert "https:" not in script
        assert "//" not in script.replace("\\/", "")


@pytest.mark.parametrize("page", PAGES)
async def test_every_file_a_docs_page_loads_is_served_without_a_key_and_cached_for_good(
    keyed: Client, page: str
) -> None:
    for url in references((await keyed.get(page)).text).urls:
        response = await keyed.get(url)

        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(CONTENT_TYPES[Path(url).suffix]), url
        assert "immutable" in response.headers["cache-control"]
        assert "max-age=31536000" in response.headers["cache-control"]
        name = Path(url).name
        if url.startswith(f"/docs{start_path()}/"):  # Minato's own start of the page
            assert response.content == (START / name).read_bytes()
            continue
        package = next(p for p in vendored().values() if url.startswith(f"/docs{p.path}/"))
        assert response.content == (STATIC / package.directory / name).read_bytes()


async def test_an_asset_url_names_its_package_version(keyed: Client) -> None:
    urls = [url for page in PAGES for url in references((await keyed.get(page)).text).urls]

    assert any(f"swagger-ui-{vendored()['swagger-ui'].version}/" in url for url in urls)
    assert any(f"scalar-{vendored()['scalar'].version}/" in url for url in urls)


async def test_a_file_that_is_not_vendored_is_a_404_in_minatos_shape(keyed: Client) -> None:
    package = vendored()["swagger-ui"]
    missing = await keyed.get(f"/docs{package.path}/swagger-ui-bundle.js.map")
    other_version = await keyed.get("/docs/assets/swagger-ui-0.0.1/swagger-ui-bundle.js")

    assert missing.status_code == 404
    assert set(missing.json()) == {"detail"}
    assert other_version.status_code in {401, 404}  # no such route: the docs router's 404 or the key check
