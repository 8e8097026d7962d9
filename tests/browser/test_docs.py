"""The API documentation pages in real Chromium, offline: every route is shown, nothing is fetched
from anywhere but Minato (the fixtures refuse and report any other origin)."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

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
