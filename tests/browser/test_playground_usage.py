"""The playground's usage panel in real Chromium: the key's requests and tokens by model after an answer,
as ``GET /usage`` reports them, and every key's for an admin."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN_KEY, USER_KEY, Browsing
from tests.browser.test_playground import _ask, _enter_key, _models_listed, _wait_for_answer

pytestmark = pytest.mark.browser
MODEL = "llama3.2:1b"


def _usage(browsing: Browsing, key: str) -> dict[str, Any]:
    response = httpx.get(f"{browsing.minato.url}/usage", headers={"X-API-Key": key}, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _opened_with(browsing: Browsing, key: str) -> Page:
    page = browsing.open("/playground")
    browsing.watch.expect_console_error(r"status of 401")  # the first look, before the key is entered
    _enter_key(page, key)
    _models_listed(page)
    return page


def test_the_usage_panel_shows_the_keys_requests_and_tokens_after_an_answer(keyed: Browsing) -> None:
    page = _opened_with(keyed, USER_KEY)
    before = _usage(keyed, USER_KEY)  # the package's Minato served other tests before
    summary = page.locator("#usage-summary")
    expect(summary).to_contain_text(f"{before['requests']} requests")

    _ask(page, MODEL, "how much have I used")
    _wait_for_answer(page)

    after = _usage(keyed, USER_KEY)
    assert after["requests"] == before["requests"] + 1
    expect(summary).to_contain_text(f"(user): {after['requests']} requests, {after['tokens']['total']} tokens")
    used = after["by_model"][MODEL]
    row = page.locator("#usage-models tbody tr", has_text=MODEL)
    expect(row.locator("td")).to_have_text(
        [
            str(used["requests"]),
            str(used["tokens"]["prompt"]),
            str(used["tokens"]["completion"]),
            str(used["tokens"]["total"]),
        ]
    )
    assert used["tokens"]["completion"] > 0
    expect(page.locator("#usage-keys-box")).to_be_hidden()  # a user key sees only its own
    expect(page.locator("#usage-error")).to_be_hidden()


def test_an_admin_sees_every_keys_usage(keyed: Browsing) -> None:
    page = _opened_with(keyed, ADMIN_KEY)
    user = _usage(keyed, USER_KEY)

    rows = page.locator("#usage-keys tbody tr")
    expect(rows).to_have_count(2)
    user_row = rows.filter(has_text=user["key"])
    expect(user_row.locator("td").nth(0)).to_have_text("user")
    expect(user_row.locator("td").nth(1)).to_have_text(str(user["requests"]))
    expect(page.locator("#usage-summary")).to_contain_text("(admin)")
