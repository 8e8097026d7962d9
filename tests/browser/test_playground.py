"""The playground in real Chromium: chatting, streaming, stopping, conversations, pulls, errors."""

from __future__ import annotations

import base64
import time
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import FilePayload, Page, expect

from tests.browser.conftest import (
    ADMIN_KEY,
    CHAT_MODELS,
    EMBEDDING_MODEL,
    MODELS,
    PACED_MODEL,
    PULLABLE_MODEL,
    USER_KEY,
    WAIT_MS,
    Browsing,
    update_readme_screenshot,
)
from tests.support.payloads import PNG_1PX
from tests.support.servers import MinatoServer
from tests.support.standin.process import StandInProcess

pytestmark = pytest.mark.browser
ANSWER = ".turn.assistant .text"


def _enter_key(page: Page, key: str) -> None:
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Use key").click()


def _models_listed(page: Page) -> list[str]:
    """The chat's models, once the page has listed them (the installed list has every model)."""
    expect(page.locator("#models-table tbody tr")).to_have_count(len(MODELS))
    expect(page.locator("#model option")).to_have_count(len(CHAT_MODELS))
    return [option.get_attribute("value") or "" for option in page.locator("#model option").all()]


def _ask(page: Page, model: str, message: str) -> None:
    page.get_by_label("Model", exact=True).select_option(model)
    box = page.get_by_label("Message", exact=True)
    box.fill(message)
    box.press("Enter")


def _wait_for_answer(page: Page, count: int = 1) -> None:
    """Until the ``count``-th answer is complete (its stats shown)."""
    expect(page.locator(".turn.assistant")).to_have_count(count)
    expect(page.locator(".turn.assistant").nth(count - 1).locator(".note")).to_contain_text("tokens")


def _events(standin: httpx.Client, kind: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = standin.get("/_standin/events").json()
    return [event for event in events if event["type"] == kind]


def _wait_for_event(standin: httpx.Client, kind: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if found := _events(standin, kind):
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"the stand-in recorded no {kind} event")


def test_the_page_is_served_by_minato_without_a_key_under_a_strict_content_security_policy(
    keyed: Browsing,
) -> None:
    response = httpx.get(f"{keyed.minato.url}/playground", timeout=10)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert httpx.get(f"{keyed.minato.url}/playground/app.js", timeout=10).status_code == 200
    # The page is public, nothing else becomes so: the API still wants the key.
    assert httpx.get(f"{keyed.minato.url}/models_list/", timeout=10).status_code == 401


def test_the_playground_lists_the_models_the_key_may_use(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")  # the first look, before the key is entered

    _enter_key(page, USER_KEY)

    assert sorted(_models_listed(page)) == sorted(CHAT_MODELS)
    expect(page.locator("#models-table tbody tr")).to_have_count(len(MODELS))


def test_an_answer_is_shown_token_by_token_while_it_streams(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, USER_KEY)
    _models_listed(page)
    page.get_by_label("Model", exact=True).select_option(PACED_MODEL)
    box = page.get_by_label("Message", exact=True)
    box.fill("line one")
    box.press("Shift+Enter")  # a new line, not a send
    box.press_sequentially("line two")
    expect(page.locator(".turn.user")).to_have_count(0)

    box.press("Enter")

    # The first words are on the page while the answer is still arriving (40 tokens, 80 ms apart).
    seen = page.wait_for_function(
        """() => {
            const text = document.querySelector('.turn.assistant .text');
            if (!text || !text.textContent) return null;
            return {text: text.textContent, busy: text.closest('.turn').getAttribute('aria-busy')};
        }""",
        timeout=WAIT_MS,
    ).json_value()
    assert seen["busy"] == "true"
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    _wait_for_answer(page)
    final = page.locator(ANSWER).inner_text()
    assert len(final) > len(seen["text"])
    assert final.startswith(seen["text"])
    assert page.locator(".turn.user .text").inner_text() == "line one\nline two"
    expect(page.locator(".turn.assistant .note")).to_contain_text("40 tokens")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()


def test_stop_closes_the_stream_and_ollama_stops_generating(keyed: Browsing, standin_events: httpx.Client) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, USER_KEY)
    _models_listed(page)
    _ask(page, PACED_MODEL, "Tell me a long story")
    expect(page.locator(ANSWER)).not_to_have_text("")

    page.get_by_role("button", name="Stop").click()

    expect(page.locator(".turn.assistant .note")).to_contain_text("Stopped")
    cancelled = _wait_for_event(standin_events, "stream_cancelled")
    assert cancelled["model"] == PACED_MODEL
    assert int(str(cancelled["tokens_sent"])) < 40
    assert not _events(standin_events, "stream_completed")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_a_conversation_is_kept_by_minato_across_a_reload(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, USER_KEY)
    _models_listed(page)
    _ask(page, "llama3.2:1b", "My name is Alice.")
    _wait_for_answer(page)
    _ask(page, "llama3.2:1b", "What is my name?")
    _wait_for_answer(page, 2)
    session = page.get_by_label("Conversation", exact=True).input_value()
    answers = [text.inner_text() for text in page.locator(ANSWER).all()]

    page.reload()

    expect(page.locator(".turn.assistant")).to_have_count(2)
    assert page.get_by_label("Conversation", exact=True).input_value() == session
    assert [text.inner_text() for text in page.locator(".turn.user .text").all()] == [
        "My name is Alice.",
        "What is my name?",
    ]
    assert [text.inner_text() for text in page.locator(ANSWER).all()] == answers
    # The key survived the reload too, and the conversation is Minato's, listed for it.
    stored = httpx.get(
        f"{keyed.minato.url}/chat/{session}", headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=10
    ).json()
    assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [
        "My name is Alice.",
        "What is my name?",
    ]
    page.get_by_text("Saved conversations").click()
    expect(page.locator("#sessions")).to_contain_text(session)


def test_a_conversation_is_cleared_from_the_page_and_from_minato(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, USER_KEY)
    _models_listed(page)
    _ask(page, "llama3.2:1b", "Remember this.")
    _wait_for_answer(page)
    session = page.get_by_label("Conversation", exact=True).input_value()

    page.get_by_role("button", name="Clear").click()

    expect(page.locator(".turn")).to_have_count(0)
    gone = httpx.get(f"{keyed.minato.url}/chat/{session}", headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=10)
    assert gone.status_code == 404


def test_a_pull_shows_a_bar_per_layer_and_the_overall_percent_up_to_100(
    keyed: Browsing, standin_events: httpx.Client
) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, ADMIN_KEY)
    _models_listed(page)
    # Every value the overall bar takes, recorded by the page itself as it changes.
    page.evaluate(
        """() => {
            window.overall = [];
            const bar = document.querySelector('#pull-overall');
            new MutationObserver(() => window.overall.push(bar.value))
                .observe(document.querySelector('#pull-percent'), {childList: true, subtree: true});
        }"""
    )

    page.get_by_label("Pull a model", exact=True).fill(PULLABLE_MODEL)
    page.get_by_role("button", name="Pull").click()

    expect(page.locator("#pull-status")).to_contain_text("is installed")
    expect(page.locator("#pull-percent")).to_have_text("100%")
    values: list[float] = page.evaluate("window.overall")
    assert any(0 < value < 100 for value in values), values
    assert values == sorted(values)
    assert values[-1] == 100
    layers = page.locator("#pull-layers progress")
    expect(layers).to_have_count(4)  # the stand-in's tinyllama has four layers
    assert {layer.get_attribute("value") for layer in layers.all()} == {"100"}
    expect(page.locator("#models-table")).to_contain_text(PULLABLE_MODEL)
    assert _events(standin_events, "stream_completed")[-1]["path"] == "/api/pull"


def test_errors_are_readable_401_without_a_key_and_403_for_a_user_key_on_admin_actions(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 40[13]")

    error = page.locator("#chat-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("401: a valid API key is required")
    expect(error).to_contain_text("Enter a valid API key above.")

    _enter_key(page, "not-a-key")
    expect(error).to_contain_text("401: the API key is not valid")

    _enter_key(page, USER_KEY)
    _models_listed(page)
    expect(error).to_be_hidden()
    page.get_by_label("Pull a model", exact=True).fill(PULLABLE_MODEL)
    page.get_by_role("button", name="Pull").click()
    admin_error = page.locator("#admin-error")
    expect(admin_error).to_contain_text("403: this route needs an admin key")
    page.get_by_role("button", name="Load llama3.2:1b", exact=True).click()
    expect(admin_error).to_contain_text("403: this route needs an admin key")


def test_without_keys_on_loopback_the_page_chats_shows_thinking_and_the_running_models(
    keyless: Browsing, standin_events: httpx.Client
) -> None:
    page = keyless.open("/playground")
    _models_listed(page)
    page.get_by_text("System prompt and parameters").click()
    page.get_by_label("System prompt", exact=True).fill("Answer briefly.")
    page.get_by_label("temperature", exact=True).fill("0.2")
    page.get_by_label("keep_alive", exact=True).fill("10m")
    page.locator("#think").check()

    _ask(page, "qwen3:0.6b", "Why is the sky blue?")

    _wait_for_answer(page)
    thinking = page.locator(".turn.assistant .thinking")
    expect(thinking).to_be_visible()
    expect(thinking.locator("p")).not_to_have_text("")
    expect(page.locator(ANSWER)).not_to_have_text("")
    sent = [r for r in standin_events.get("/_standin/requests").json() if r["path"] == "/api/chat"][-1]
    body = sent["body"]
    assert body["think"] is True
    assert body["options"]["temperature"] == 0.2
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    running = page.locator("#running-table tbody tr", has_text="qwen3:0.6b")
    expect(running).to_have_count(1)
    countdown = running.locator(".countdown")
    first = countdown.inner_text()
    assert first.startswith("9:") or first == "10:00"
    expect(countdown).not_to_have_text(first)  # it counts down on its own
    expect(page.locator("#backends-table tbody tr")).to_have_count(1)
    page.get_by_text("System prompt and parameters").click()  # folded, for the README's picture
    update_readme_screenshot(page, "playground.png")


def test_an_image_is_sent_to_a_vision_model(keyless: Browsing, standin_events: httpx.Client) -> None:
    page = keyless.open("/playground")
    _models_listed(page)
    page.get_by_label("Images (vision models)", exact=True).set_input_files(
        files=[FilePayload(name="dot.png", mimeType="image/png", buffer=PNG_1PX)]
    )

    _ask(page, "llava:7b", "What is in this picture?")

    _wait_for_answer(page)
    expect(page.locator(".turn.user img")).to_have_count(1)
    sent = [r for r in standin_events.get("/_standin/requests").json() if r["path"] == "/api/chat"][-1]
    body = sent["body"]
    assert [base64.b64decode(image) for image in body["messages"][-1]["images"]] == [PNG_1PX]


def test_with_a_pool_the_page_shows_which_backend_holds_what_and_pulls_onto_each(
    pooled: Browsing, pool_minato: tuple[MinatoServer, list[StandInProcess]]
) -> None:
    first, second = (urlsplit(standin.url).netloc for standin in pool_minato[1])
    page = pooled.open("/playground")

    backends = page.locator("#backends-table tbody tr")
    expect(backends).to_have_count(2)
    expect(backends.filter(has_text=first)).to_contain_text("llama3.2:1b")
    expect(backends.filter(has_text=second)).to_contain_text("qwen3:0.6b")
    expect(page.locator("#models-table tbody tr", has_text="llama3.2:1b")).to_contain_text(first)
    expect(page.locator("#models-table tbody tr", has_text="qwen3:0.6b")).to_contain_text(second)
    expect(page.locator("#running-table tbody tr", has_text="qwen3:0.6b")).to_contain_text(second)

    page.get_by_label("Pull a model", exact=True).fill(PULLABLE_MODEL)
    page.get_by_role("button", name="Pull").click()

    expect(page.locator("#pull-status")).to_contain_text("is installed")
    expect(page.locator("#pull-percent")).to_have_text("100%")
    layers = page.locator("#pull-layers li")
    expect(layers).to_have_count(8)  # four layers on each backend
    expect(layers.filter(has_text=f"on {first}")).to_have_count(4)
    expect(layers.filter(has_text=f"on {second}")).to_have_count(4)
    expect(page.locator("#models-table tbody tr", has_text=PULLABLE_MODEL)).to_contain_text(second)


def test_an_embedding_model_is_managed_with_the_others_but_not_offered_for_chat(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, ADMIN_KEY)

    chat = _models_listed(page)

    assert EMBEDDING_MODEL not in chat
    assert sorted(chat) == sorted(CHAT_MODELS)
    row = page.locator("#models-table tbody tr", has_text=EMBEDDING_MODEL)
    expect(row).to_contain_text("embeddings only")
    expect(row.get_by_role("button", name=f"Delete {EMBEDDING_MODEL}", exact=True)).to_be_visible()
    expect(page.locator("#models-table tbody tr", has_text="llama3.2:1b")).not_to_contain_text("embeddings only")


#: The sizes the lists must fit: a phone (cards), a narrow single column (tables), a wide screen
#: (cards in the right half).
SCREENS = [(390, 844), (900, 800), (1280, 800)]
#: A cell with more empty height than about a line of text is wasted space (a row stretched by a
#: neighbour, or by something off the screen).
LARGE_BLANK_PX = 24
LISTS = ["models-table", "running-table", "backends-table"]
#: Measures, in the page, what of the lists does not fit: the page or a list scrolling sideways, a
#: cell, column name or button outside the screen or cut, and each model row's largest empty height.
LAYOUT = """(lists) => {
  const width = window.innerWidth;
  const shown = (el) => el.getClientRects().length > 0 && el.getBoundingClientRect().width > 1;
  const text = (el) => el.textContent.trim().slice(0, 40);
  const report = {pageWidth: document.documentElement.scrollWidth, width, scrolls: [], outside: [], cut: [],
                  unnamed: [], blank: {}, buttons: 0};
  for (const id of lists) {
    const table = document.getElementById(id);
    const box = table.parentElement;
    if (box.scrollWidth > box.clientWidth) report.scrolls.push(id);
    const names = Array.from(table.tHead.rows[0].cells, (th) => th.textContent.trim());
    const headed = shown(table.tHead);
    for (const el of table.querySelectorAll(headed ? 'th, td, button' : 'tbody th, tbody td, tbody button')) {
      if (!shown(el)) continue;
      const r = el.getBoundingClientRect();
      if (r.left < 0 || r.right > width) report.outside.push(`${id}: ${text(el)}`);
      if (el.scrollWidth > el.clientWidth) report.cut.push(`${id}: ${text(el)}`);
      if (el.tagName === 'BUTTON') report.buttons += 1;
    }
    // Each column's name can be read: its header cell, or (a card) the label before each value.
    for (const row of table.tBodies[0].rows) {
      Array.from(row.cells).forEach((cell, index) => {
        if (headed || cell.tagName === 'TH' || cell.classList.contains('actions')) return;
        const label = getComputedStyle(cell, '::before').content;
        if (cell.dataset.label !== names[index] || label === 'none' || label === '') {
          report.unnamed.push(`${id}: ${names[index]}`);
        }
      });
    }
  }
  const blankOf = (el) => {
    const style = getComputedStyle(el);
    return el.getBoundingClientRect().height - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom)
      - parseFloat(style.borderTopWidth) - parseFloat(style.borderBottomWidth);
  };
  for (const row of document.querySelectorAll('#models-table tbody tr')) {
    const cells = Array.from(row.cells);
    let worst = 0;
    for (const cell of cells) {
      const range = document.createRange();
      range.selectNodeContents(cell);
      worst = Math.max(worst, blankOf(cell) - range.getBoundingClientRect().height);
    }
    const boxes = cells.map((cell) => cell.getBoundingClientRect());
    const span = Math.max(...boxes.map((b) => b.bottom)) - Math.min(...boxes.map((b) => b.top));
    report.blank[row.cells[0].firstChild.textContent] = Math.round(Math.max(worst, blankOf(row) - span));
  }
  return report;
}"""


def _assert_the_lists_fit(page: Page, width: int, models: int) -> None:
    report = page.evaluate(LAYOUT, LISTS)

    assert report["width"] == width
    assert report["pageWidth"] <= width, "the page scrolls sideways"
    assert report["scrolls"] == [], "a list scrolls sideways"
    assert report["outside"] == [], "off the screen"
    assert report["cut"] == [], "cut"
    assert report["unnamed"] == [], "a value without its column's name"
    assert report["buttons"] == 3 * models, "every model's Load, Unload and Delete are shown"
    assert len(report["blank"]) == models
    assert all(blank <= LARGE_BLANK_PX for blank in report["blank"].values()), report["blank"]
    for button in page.locator("#models-table button").all():
        box = button.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width, button.get_attribute("aria-label")


@pytest.mark.parametrize(("width", "height"), SCREENS)
def test_the_lists_fit_the_screen_without_sideways_scrolling_or_empty_space(
    keyless: Browsing, width: int, height: int
) -> None:
    # A model running, so every list has a row.
    httpx.post(f"{keyless.minato.url}/load/qwen3:0.6b", timeout=10).raise_for_status()
    page = keyless.open("/playground")
    page.set_viewport_size({"width": width, "height": height})
    expect(page.locator("#models-table tbody tr")).to_have_count(len(MODELS))
    expect(page.locator("#running-table tbody tr")).to_have_count(1)
    expect(page.locator("#backends-table tbody tr")).to_have_count(1)

    _assert_the_lists_fit(page, width, len(MODELS))
    for control in ("Model", "Message", "API key"):
        box = page.get_by_label(control, exact=True).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width, control
    if width == 390:
        update_readme_screenshot(page, "playground-phone.png", page.locator("#admin"))


@pytest.mark.parametrize(("width", "height"), SCREENS)
def test_with_a_pool_the_lists_fit_the_screen_too(pooled: Browsing, width: int, height: int) -> None:
    # The pool's stand-ins are not reset between tests (another may have pulled onto them): ask Minato.
    installed = len(httpx.get(f"{pooled.minato.url}/models_list/", timeout=10).json()["models_list"])
    page = pooled.open("/playground")
    page.set_viewport_size({"width": width, "height": height})
    expect(page.locator("#models-table tbody tr")).to_have_count(installed)
    expect(page.locator("#backends-table tbody tr")).to_have_count(2)

    _assert_the_lists_fit(page, width, installed)


def test_an_admin_loads_unloads_and_deletes_a_model_from_the_page(keyed: Browsing) -> None:
    page = keyed.open("/playground")
    keyed.watch.expect_console_error(r"status of 401")
    _enter_key(page, ADMIN_KEY)
    _models_listed(page)
    running = page.locator("#running-table tbody tr", has_text="llava:7b")
    expect(running).to_have_count(0)

    with page.expect_request(lambda request: request.url.endswith("/load/llava:7b")) as load:
        page.get_by_role("button", name="Load llava:7b", exact=True).click()
    assert load.value.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    expect(running).to_have_count(1)
    expect(running.locator(".countdown")).to_contain_text(":")
    expect(page.locator("#models-table tbody tr", has_text="llava:7b").locator("td").nth(1)).to_have_text("yes")

    page.get_by_role("button", name="Unload llava:7b", exact=True).click()
    expect(running).to_have_count(0)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete llava:7b", exact=True).click()
    expect(page.locator("#models-table tbody tr", has_text="llava:7b")).to_have_count(0)
    expect(page.locator("#admin-error")).to_be_hidden()


def test_a_busy_ollama_is_a_readable_503_with_its_retry_delay(keyless: Browsing, standin_events: httpx.Client) -> None:
    page = keyless.open("/playground")
    keyless.watch.expect_console_error(r"status of 503")
    _models_listed(page)
    standin_events.post("/_standin/busy", json={"busy": True}).raise_for_status()

    _ask(page, "llama3.2:1b", "hi")

    error = page.locator("#chat-error")
    expect(error).to_contain_text("503: ")
    expect(error).to_contain_text("Retry in")
    expect(error).to_contain_text("busy or unreachable")
    expect(page.locator(".turn.assistant .note")).to_have_text("No answer.")
