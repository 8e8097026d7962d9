"""The playground's queue panel in real Chromium: what ``GET /queue`` reports, refreshed while it is shown.

Minato runs with one generation slot (``MINATO_MAX_GENERATIONS=1``) in front of a stand-in of its own
(the default catalogue, which has the gated models; the gate is the stand-in's, so no other test's).
Each held answer streams ``standin/gated:2``, whose tokens the stand-in writes only as far as the test has
opened its gate: open past the first token (so Minato has primed the stream and knows its backend) and
not the second, the first answer holds the slot and the next one waits in Minato's queue.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import WAIT_MS, Browsing, _watched
from tests.browser.test_playground import _enter_key
from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.browser

MODEL: Final = "standin/gated:2"
KEYS: Final = {"ops": "queue-admin-key", "alice": "queue-key-of-alice", "bob": "queue-key-of-bob"}
METRICS_KEY: Final = "queue-metrics-key"
DEADLINE_S: Final = 30.0


@pytest.fixture(scope="module")
def gated_standin() -> Iterator[StandInProcess]:
    """A stand-in with its default catalogue: ``standin/gated:<N>`` answers there."""
    standin = StandInProcess()
    yield standin
    standin.stop()


@pytest.fixture
def gate(gated_standin: StandInProcess) -> Iterator[httpx.Client]:
    """The stand-in's introspection routes, reset (its gate closed) for every test."""
    with httpx.Client(base_url=gated_standin.url, timeout=10) as client:
        client.post("/_standin/reset").raise_for_status()
        yield client


@pytest.fixture(scope="module")
def one_slot_minato(gated_standin: StandInProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with one generation slot, an admin key (``ops``), two user keys and a metrics key."""
    directory = tmp_path_factory.mktemp("minato-one-slot")
    keys = directory / "keys.toml"
    keys.write_text(
        f'[keys.ops]\nkey = "{KEYS["ops"]}"\nrole = "admin"\n\n'
        f'[keys.alice]\nkey = "{KEYS["alice"]}"\n\n'
        f'[keys.bob]\nkey = "{KEYS["bob"]}"\n'
    )
    server = start_minato(
        gated_standin.url,
        directory / "minato.log",
        keys_file=str(keys),
        metrics_keys=METRICS_KEY,
        max_generations="1",
        max_queue="10",
    )
    yield server
    stop_minato(server)


@pytest.fixture
def one_slot(
    browser: Browser, one_slot_minato: MinatoServer, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    """A fresh browser context on the Minato with one slot."""
    yield from _watched(browser, one_slot_minato, artifacts, request)


def _queue(minato: MinatoServer) -> dict[str, Any]:
    answer = httpx.get(f"{minato.url}/queue", headers={"X-API-Key": KEYS["ops"]}, timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


@contextmanager
def _alice_runs_and_bob_waits(minato: MinatoServer, standin: httpx.Client) -> Iterator[None]:
    """Alice's answer holds the one slot and Bob's waits for it, until the block ends and the gate opens."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        sent: list[Future[httpx.Response]] = []

        def ask(name: str) -> None:
            # A stream, as the playground asks: Minato knows its backend once the first token came.
            url = f"{minato.url}/stream/{MODEL}"
            headers = {"X-API-Key": KEYS[name]}
            sent.append(pool.submit(httpx.post, url, json={"message": name}, headers=headers, timeout=DEADLINE_S))

        try:
            standin.post("/_standin/gate", json={"tokens": 1}).raise_for_status()
            ask("alice")
            eventually(lambda: _queue(minato)["running"], lambda r: [g["key"] for g in r] == ["alice"], "alice runs")
            ask("bob")
            eventually(lambda: _queue(minato)["waiting"], lambda w: [g["key"] for g in w] == ["bob"], "bob waits")
            yield
        finally:
            standin.post("/_standin/gate", json={"tokens": 2}).raise_for_status()
            answers = [future.result(timeout=DEADLINE_S) for future in sent]
    assert [answer.status_code for answer in answers] == [200] * len(answers)


def _panel(browsing: Browsing, key: str) -> Page:
    """The playground with ``key``, its queue panel on the screen (the panel looks only while it is)."""
    page = browsing.open("/playground")
    browsing.watch.expect_console_error(r"status of 401")  # the first look, before the key is entered
    _enter_key(page, key)
    page.locator("#queue").scroll_into_view_if_needed()
    return page


def test_an_admin_sees_the_running_and_the_waiting_generation_and_the_queue_emptying(
    one_slot: Browsing, gate: httpx.Client
) -> None:
    page = _panel(one_slot, KEYS["ops"])
    summary = page.locator("#queue-summary")
    running = page.locator("#queue-running tbody tr")
    waiting = page.locator("#queue-waiting tbody tr")
    expect(summary).to_have_text(re.compile(r"^0 running \(of 1 slot\), 0 waiting, in process \d+$"))
    backend = urlsplit(str(gate.base_url)).netloc

    with _alice_runs_and_bob_waits(one_slot.minato, gate):
        # Nothing on the page moves: the panel's own refresh brings them (a look every 2 s).
        expect(summary).to_contain_text("1 running (of 1 slot), 1 waiting", timeout=WAIT_MS)
        expect(running).to_have_count(1)
        expect(running.locator("th")).to_have_text(MODEL)
        expect(running.locator("td").nth(0)).to_have_text("alice")
        expect(running.locator("td").nth(1)).to_have_text(backend)
        expect(running.locator("td").nth(2)).to_have_text(re.compile(r"^\d+\.\d s$"))
        expect(waiting).to_have_count(1)
        expect(waiting.locator("th")).to_have_text(MODEL)
        expect(waiting.locator("td")).to_have_text(["bob", "1", re.compile(r"^\d+\.\d s$")])

    expect(summary).to_contain_text("0 running (of 1 slot), 0 waiting", timeout=WAIT_MS)
    expect(running).to_have_count(0)
    expect(waiting).to_have_count(0)
    expect(page.locator("#queue-error")).to_be_hidden()


def test_a_user_key_sees_only_its_own_generation_with_its_position(one_slot: Browsing, gate: httpx.Client) -> None:
    with _alice_runs_and_bob_waits(one_slot.minato, gate):
        page = _panel(one_slot, KEYS["bob"])
        waiting = page.locator("#queue-waiting tbody tr")
        expect(waiting).to_have_count(1)
        expect(waiting.locator("th")).to_have_text(MODEL)
        expect(waiting.locator("td")).to_have_text(["bob", "1", re.compile(r"^\d+\.\d s$")])
        expect(page.locator("#queue-summary")).to_contain_text("0 running (of 1 slot), 1 waiting")
        expect(page.locator("#queue-running tbody tr")).to_have_count(0)  # alice's is not bob's to see
        expect(page.locator("#queue")).not_to_contain_text("alice")


def test_without_a_key_and_with_a_metrics_key_the_panel_says_why_in_a_sentence(one_slot: Browsing) -> None:
    page = one_slot.open("/playground")
    one_slot.watch.expect_console_error(r"status of 40[13]")
    page.locator("#queue").scroll_into_view_if_needed()
    error = page.locator("#queue-error")
    expect(error).to_contain_text("401: ")
    expect(error).to_contain_text("Enter a valid API key above.")

    _enter_key(page, METRICS_KEY)
    page.locator("#queue").scroll_into_view_if_needed()
    expect(error).to_contain_text("403: this key may only read /metrics")
    expect(page.locator("#queue-summary")).to_have_text("")
    expect(page.locator("#queue-running tbody tr")).to_have_count(0)

    _enter_key(page, KEYS["ops"])  # the panel recovers when the key changes
    page.locator("#queue").scroll_into_view_if_needed()
    expect(page.locator("#queue-summary")).to_contain_text("0 running (of 1 slot), 0 waiting")
    expect(error).to_be_hidden()
