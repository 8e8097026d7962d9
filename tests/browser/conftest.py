"""Browser fixtures: Debian's Chromium, driven by Playwright, on pages Minato serves as a real process.

Minato runs in front of the Ollama stand-in (``tests/support/servers.py`` starts both). Every page
is watched: a request to any origin but Minato's is refused and recorded, and so are console errors
and uncaught exceptions; a test fails on either unless it says which console errors it expects.
Each test leaves a screenshot in the artifacts directory (``MINATO_BROWSER_ARTIFACTS``, else
pytest's temporary directory); with ``MINATO_UPDATE_SCREENSHOTS=1`` the README's screenshots in
``docs/`` are written too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Playwright, Route, sync_playwright

from tests.support.servers import REPO, MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_MISSING: Final = (
    "chromium is not installed: the browser tests need Debian's chromium "
    "(apt-get install chromium; .ci/run installs it when missing)"
)
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
)
USER_KEY: Final = "playground-user-key"
ADMIN_KEY: Final = "playground-admin-key"
#: A model whose answer takes seconds (40 tokens, 80 ms apart): time to see text before its end, and to stop it.
PACED_MODEL: Final = "standin/paced:40x80"
#: An embedding model: installed and managed like the others, but it cannot chat.
EMBEDDING_MODEL: Final = "nomic-embed-text:latest"
#: The models the chat offers.
CHAT_MODELS: Final = ("llama3.2:1b", "qwen3:0.6b", "llava:7b", PACED_MODEL)
#: What the stand-in has installed; tinyllama is only in its registry, for pulls.
MODELS: Final = (*CHAT_MODELS, EMBEDDING_MODEL)
PULLABLE_MODEL: Final = "tinyllama:latest"
SCREENSHOTS_VARIABLE: Final = "MINATO_UPDATE_SCREENSHOTS"
ARTIFACTS_VARIABLE: Final = "MINATO_BROWSER_ARTIFACTS"
#: Bounds every wait for the page; the stand-in answers within a few seconds.
WAIT_MS: Final = 15_000


@pytest.fixture(scope="package")
def browser_standin() -> Iterator[StandInProcess]:
    """A stand-in of its own: the models above, and pulls slow enough to watch (20 lines, 60 ms apart)."""
    standin = StandInProcess("--models", ",".join(MODELS), "--pull-step-ms", "60")
    yield standin
    standin.stop()


@pytest.fixture(scope="package")
def keyed_minato(browser_standin: StandInProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with a user key and an admin key."""
    log = tmp_path_factory.mktemp("minato-keyed") / "minato.log"
    server = start_minato(browser_standin.url, log, api_keys=USER_KEY, admin_keys=ADMIN_KEY)
    yield server
    stop_minato(server)


@pytest.fixture(scope="package")
def open_minato(browser_standin: StandInProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato without keys, on loopback."""
    log = tmp_path_factory.mktemp("minato-open") / "minato.log"
    server = start_minato(browser_standin.url, log)
    yield server
    stop_minato(server)


@pytest.fixture(scope="package")
def pool_minato(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MinatoServer, list[StandInProcess]]]:
    """Minato without keys in front of a pool of two stand-ins, each with a model of its own loaded."""
    first = StandInProcess("--models", "llama3.2:1b", "--loaded", "llama3.2:1b", "--pull-step-ms", "30")
    second = StandInProcess("--models", "qwen3:0.6b", "--loaded", "qwen3:0.6b", "--pull-step-ms", "30")
    log = tmp_path_factory.mktemp("minato-pool") / "minato.log"
    server = start_minato(f"{first.url},{second.url}", log)
    yield server, [first, second]
    stop_minato(server)
    first.stop()
    second.stop()


@pytest.fixture(autouse=True)
def standin_events(browser_standin: StandInProcess) -> Iterator[httpx.Client]:
    """The stand-in's introspection routes; every test starts it afresh (its models, no recordings)."""
    with httpx.Client(base_url=browser_standin.url, timeout=10) as client:
        client.post("/_standin/reset").raise_for_status()
        yield client


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver, for the browser tests only (its event loop lives in its own thread)."""
    if not CHROMIUM.exists():
        pytest.fail(CHROMIUM_MISSING)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless, that calls nowhere on its own.

    Playwright gives each launch a fresh temporary profile; crash dumps go to a scratch directory too.
    """
    scratch = Path(tempfile.mkdtemp(prefix="minato-chromium-"))
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, f"--crash-dumps-dir={scratch}"]
    )
    yield chromium
    chromium.close()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="package")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    configured = os.environ.get(ARTIFACTS_VARIABLE)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("browser-artifacts")


@dataclass
class Watch:
    """What a page did that the test did not ask for."""

    origin: str
    #: Other origins the test itself serves (a page of another site framing Minato's).
    also_allowed: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    expected_errors: list[re.Pattern[str]] = field(default_factory=list)

    def expect_console_error(self, pattern: str) -> None:
        """Console errors matching ``pattern`` are expected (Chromium logs every 4xx a fetch gets)."""
        self.expected_errors.append(re.compile(pattern))

    def unexpected_console_errors(self) -> list[str]:
        """The console errors no ``expect_console_error`` pattern covers."""
        return [e for e in self.console_errors if not any(p.search(e) for p in self.expected_errors)]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Browsing:
    """A watched browser context on one Minato; ``open`` gives it a page at a path."""

    minato: MinatoServer
    watch: Watch
    new_page: Callable[[], Page]
    pages: list[Page] = field(default_factory=list)

    def open(self, path: str) -> Page:
        page = self.new_page()
        self.pages.append(page)
        page.goto(self.minato.url + path)
        return page


def _watched(
    browser: Browser, minato: MinatoServer, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    watch = Watch(origin=_origin(minato.url))

    def refuse_foreign(route: Route) -> None:
        url = route.request.url
        watch.asked.append(url)
        if url.startswith(("data:", "blob:")) or _origin(url) in {watch.origin, *watch.also_allowed}:
            route.continue_()
        else:
            watch.foreign.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", refuse_foreign)

    def new_page() -> Page:
        page = context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watch.console_errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: watch.console_errors.append(f"uncaught: {error}"))
        return page

    browsing = Browsing(minato=minato, watch=watch, new_page=new_page)
    yield browsing
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    for index, page in enumerate(browsing.pages):
        if not page.is_closed():
            page.screenshot(path=str(artifacts / f"{name}-{index}.png"))
    context.close()
    assert not watch.foreign, f"the page asked for other origins than Minato's: {watch.foreign}"
    assert not [url for url in watch.asked if USER_KEY in url or ADMIN_KEY in url], "a key went into a URL"
    unexpected = watch.unexpected_console_errors()
    assert not unexpected, f"console errors: {unexpected}"


@pytest.fixture
def keyed(
    browser: Browser, keyed_minato: MinatoServer, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    """A fresh browser context (empty storage) on the Minato with keys."""
    yield from _watched(browser, keyed_minato, artifacts, request)


@pytest.fixture
def pooled(
    browser: Browser,
    pool_minato: tuple[MinatoServer, list[StandInProcess]],
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Browsing]:
    """A fresh browser context on the Minato in front of two backends."""
    yield from _watched(browser, pool_minato[0], artifacts, request)


@pytest.fixture
def keyless(
    browser: Browser, open_minato: MinatoServer, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    """A fresh browser context on the Minato without keys."""
    yield from _watched(browser, open_minato, artifacts, request)


def update_readme_screenshot(page: Page, name: str, part: Locator | None = None) -> None:
    """Write ``docs/<name>`` for the README when ``MINATO_UPDATE_SCREENSHOTS=1``: the top of the page,
    or one ``part`` of it."""
    if os.environ.get(SCREENSHOTS_VARIABLE) == "1":
        page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
        if part is None:
            page.screenshot(path=str(REPO / "docs" / name), full_page=False)
        else:
            part.screenshot(path=str(REPO / "docs" / name))
