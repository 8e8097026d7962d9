"""The API documentation pages in real Chromium, offline: every route is shown, nothing is fetched
from anywhere but Minato (the fixtures refuse and report any other origin), Try-it-out works under the
pages' policy, nothing that needs Scalar's servers is offered, and no other site can frame a page."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

import httpx
import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser.conftest import WAIT_MS, Browsing, update_readme_screenshot

pytestmark = pytest.mark.browser

#: How Scalar's sidebar names the button of a tag's group: "Open Group - <tag>" while it is folded,
#: "Close Group - <tag>" once open (older releases put the tag first).
CLOSED_GROUP = re.compile(r"\bOpen Group\b")
GROUP = re.compile(r"\b(Open|Close) Group\b")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _operations(browsing: Browsing) -> dict[tuple[str, str], str]:
    """Every operation of Minato's OpenAPI document: (method, path) -> summary."""
    document = httpx.get(f"{browsing.minato.url}/docs/openapi.json", timeout=10).json()
    return {
        (method, path): operation.get("summary") or operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_swagger_ui_shows_every_route_offline(keyless: Browsing) -> None:
    operations = _operations(keyless)
    page = keyless.open("/docs")

    blocks = page.locator(".opblock")
    expect(blocks).to_have_count(len(operations), timeout=WAIT_MS)
    shown = page.evaluate(
        """() => Array.from(document.querySelectorAll('.opblock'), (block) => [
            block.querySelector('.opblock-summary-method').textContent.trim().toLowerCase(),
            block.querySelector('.opblock-summary-path').getAttribute('data-path'),
        ])"""
    )
    assert {(method, path) for method, path in shown} == set(operations)
    update_readme_screenshot(page, "docs.png")


def test_scalar_shows_every_route_offline(keyless: Browsing) -> None:
    operations = _operations(keyless)
    page = keyless.open("/docs/scalar")

    # Scalar names each operation by its summary in its sidebar, where only the first tag's group is
    # open: open every group (each opened group may show more), bounded by the number of operations.
    summaries = sorted(set(operations.values()))
    expect(page.get_by_role("button", name=GROUP).first).to_be_attached(timeout=WAIT_MS)
    closed = page.get_by_role("button", name=CLOSED_GROUP)
    for _ in range(len(operations)):
        if not closed.count():
            break
        closed.first.click()
    try:
        page.wait_for_function(
            "(summaries) => summaries.every((summary) => document.body.textContent.includes(summary))",
            arg=summaries,
            timeout=WAIT_MS,
        )
    except PlaywrightTimeoutError:
        text = page.evaluate("() => document.body.textContent")
        pytest.fail(f"Scalar does not show: {[summary for summary in summaries if summary not in text]}")


def _open_scalar(browsing: Browsing) -> Page:
    page = browsing.open("/docs/scalar")
    expect(page.get_by_role("button", name=GROUP).first).to_be_attached(timeout=WAIT_MS)
    return page


#: What Scalar offers that runs on Scalar's servers (or opens them), none of which can work offline.
SCALAR_SERVICES: Final = (
    "Ask AI",
    "Agent Scalar",
    "Generate SDK",
    "Generate SDKs & MCP",
    "Generate MCP",
    "Deploy",
    "Share",
    "Open API Client",
    "Developer Tools",
    "Configure",
)
#: What a placeholder that looks like a key looks like (Scalar's is base64 of a joke).
KEY_LIKE: Final = re.compile(r"^[A-Za-z0-9+/=_-]{20,}$")


def _offered_services(page: Page) -> list[str]:
    """The services above that the page shows, as a button, a link or a line of text."""
    shown = []
    for name in SCALAR_SERVICES:
        for found in (
            page.get_by_role("button", name=name, exact=True),
            page.get_by_role("link", name=name, exact=True),
            page.get_by_text(name, exact=True),
        ):
            if any(element.is_visible() for element in found.all()):
                shown.append(name)
                break
    return shown


def _visible_key_like_placeholders(page: Page) -> list[str]:
    placeholders: list[str] = page.evaluate(
        """() => Array.from(document.querySelectorAll('input, textarea'))
            .filter((input) => input.placeholder && input.getClientRects().length
                && !getComputedStyle(input, '::placeholder').color.match(/^rgba\\(.*, 0\\)$|^transparent$/))
            .map((input) => input.placeholder)"""
    )
    return [text for text in placeholders if KEY_LIKE.match(text)]


def test_scalar_offers_nothing_that_needs_scalars_servers_and_no_placeholder_key(keyless: Browsing) -> None:
    page = _open_scalar(keyless)

    assert _offered_services(page) == []
    assert _visible_key_like_placeholders(page) == []
    # The API key field is there, empty and without a key-like hint.
    expect(page.get_by_text("X-API-Key").first).to_be_visible()

    # The in-page client (each operation's "Test Request") stays, and offers none of them either.
    page.get_by_text("Ollama: version", exact=True).first.click()  # in the sidebar
    page.get_by_role("button", name=re.compile(r"^Test Request\s*\(get \/api\/version\)$")).click()
    send = page.get_by_role("button", name=re.compile(r"^Send")).first
    expect(send).to_be_visible()
    assert _offered_services(page) == []
    assert _visible_key_like_placeholders(page) == []
    send.click()
    expect(page.get_by_text("200 OK").first).to_be_visible()
    expect(page.get_by_text('"version"').first).to_be_visible()


def test_swagger_ui_tries_a_route_out_under_the_pages_policy(keyless: Browsing) -> None:
    page = keyless.open("/docs")
    operation = page.locator('.opblock:has(.opblock-summary-path[data-path="/models_list"])')
    operation.locator(".opblock-summary").click()

    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()

    expect(operation.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    expect(operation.locator(".live-responses-table tbody")).to_contain_text('"models_list"')
    # Swagger UI's own Authorize dialog opens too (where a key is typed).
    page.get_by_role("button", name="Authorize").first.click()
    expect(page.get_by_text("Available authorizations")).to_be_visible()


@pytest.fixture
def another_site(keyless: Browsing) -> Iterator[str]:
    """A page on another origin (a second loopback server) framing Minato's pages, and, as a control,
    its JSON health route, which carries no page headers."""
    frames = "".join(
        f'<iframe name="{name}" src="{keyless.minato.url}{path}"></iframe>'
        for name, path in (("health", "/health"), *FRAMED.items())
    )
    body = f"<!doctype html><title>another site</title>{frames}".encode()

    class Framing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Framing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    keyless.watch.also_allowed.add(url)
    yield url
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


#: The pages another site tries to frame, by frame name.
FRAMED: Final = {"swagger": "/docs", "scalar": "/docs/scalar", "playground": "/playground"}
#: Where Chromium puts a frame it refused to show.
REFUSED: Final = "chrome-error://chromewebdata/"


def test_no_other_site_can_frame_the_docs_or_the_playground(keyless: Browsing, another_site: str) -> None:
    keyless.watch.expect_console_error(r"frame-ancestors 'none'")
    page = keyless.new_page()
    keyless.pages.append(page)

    page.goto(another_site)  # returns once the page and every frame in it has loaded (or failed to)

    # The control: a route without page headers is framed and shown, so a refused frame is the headers' doing.
    health = page.frame(name="health")
    assert health is not None
    expect(health.locator("body")).to_contain_text('"status":"ok"')
    frames = {name: page.frame(name=name) for name in FRAMED}
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline and any(f is None or f.url != REFUSED for f in frames.values()):
        page.wait_for_timeout(50)
    assert {name: frame.url if frame else None for name, frame in frames.items()} == dict.fromkeys(FRAMED, REFUSED)
    # Refused before anything ran: the framed pages asked for none of their scripts.
    assert not [url for url in keyless.watch.asked if "/assets/" in url or url.endswith(".js")]
