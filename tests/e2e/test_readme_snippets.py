"""Every curl and client snippet of README.md and docs/*.md, run against Minato as a real process.

The snippets are read from the markdown when the tests are collected (``tests/support/snippets.py``): no
snippet is copied here, and one added to the docs becomes a test case of its own, named by its file
and line. Each page is run top to bottom as a reader would follow it, against its own Ollama
stand-in holding only the models README's "Set up" pulls, behind two Minatos: one without keys (the
compose set-up, on loopback) for snippets that send none, and one with a user and an admin key for
snippets that write a key (``<key>``, ``<admin key>``; ``<fingerprint>`` is the user key's).

Only the address (``localhost:8000``, ``127.0.0.1:8000``, ``minato:8000``) and those placeholders
are rewritten. curl runs through ``/bin/sh -e`` with ``--fail-with-body`` (from a ``.curlrc``), so a
status other than 2xx fails the snippet unless it declares the one it shows; Python snippets run
with this interpreter, JavaScript ones with ``node`` and ``tests/e2e/node``'s ollama-js. Each must
finish within a bound and exit 0.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from minato.auth.keys import digest_of
from tests.support.payloads import PNG_1PX
from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.snippets import (
    ADMIN_KEY,
    FINGERPRINT,
    REPO,
    USER_KEY,
    Directive,
    Kind,
    Snippet,
    all_snippets,
    markdown_files,
    rewrite,
    setup_models,
    uses_keys,
)
from tests.support.standin.process import StandInProcess

pytestmark = pytest.mark.e2e

USER: Final = "readme-user-key"
ADMIN: Final = "readme-admin-key"
KEYS: Final = {USER_KEY: USER, ADMIN_KEY: ADMIN, FINGERPRINT: digest_of(USER).hex()[:12]}
#: The only reasons a block may give for not being run, and how many blocks may give each.
ALLOWED_SKIPS: Final = {
    "needs docker": 1,  # docs/scaling.md: `docker compose` starts the deploy/ example
    "needs a pool of backends": 1,  # `?backend=gpu2:11434` names one backend of a pool
    "needs the internet": 1,  # `image_url` makes Minato download https://example.com/cat.jpg
}
SNIPPET_TIMEOUT_S: Final = 90.0
CURL_MAX_TIME_S: Final = 30
NODE_MODULES: Final = REPO / "tests" / "e2e" / "node" / "node_modules"
#: An 8x8 baseline JPEG (drawn by Chromium's canvas encoder), for the snippets that upload a .jpg.
JPEG_8PX: Final = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA0JCgsKCA0LCgsODg0PEyAVExISEyccHhcgLikxMC4pLSwzOko+MzZGNywtQFdBRkxO"
    "UlNSMj5aYVpQYEpRUk//2wBDAQ4ODhMREyYVFSZPNS01T09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09P"
    "T09PT09PT0//wAARCAAIAAgDASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAAAAL/xAAbEAEAAAcAAAAAAAAAAAAAAAAAFSUx"
    "UmSCkf/EABQBAQAAAAAAAAAAAAAAAAAAAAX/xAAeEQACAAYDAAAAAAAAAAAAAAABEQACAxIhQRMiUf/aAAwDAQACEQMRAD8AiXwj"
    "N2u5QA5Ro8V3YlknJaeh4BoQdPPcsJR//9k="
)
IMAGES: Final = {".png": PNG_1PX, ".jpg": JPEG_8PX, ".jpeg": JPEG_8PX}
_IMAGE_NAME: Final = re.compile(r"(?<![\w./-])([\w-]+\.(?:png|jpe?g|gif|webp|bmp))\b")
_STATUS: Final = re.compile(r"^snippet-status (\d{3})$", re.MULTILINE)
_CLIENT_ENV: Final = ("OLLAMA_", "OPENAI_", "ANTHROPIC_", "MINATO_", "LANGCHAIN_")

SNIPPETS: Final = all_snippets(markdown_files())


@dataclass(frozen=True)
class Page:
    """One page's world: a stand-in with the set-up's models, Minato without and with keys."""

    standin: StandInProcess
    keyless: MinatoServer
    keyed: MinatoServer
    workdir: Path


@dataclass(frozen=True)
class Outcome:
    ok: bool
    report: str


class Runner:
    """Runs snippets, each at most once, every page in its own world, in page order."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._pages: dict[str, Page] = {}
        self._done: dict[str, Outcome] = {}
        self.models = setup_models((REPO / "README.md").read_text())

    def page(self, path: str, *extra_models: str) -> Page:
        """The page's world, started on first use (``extra_models`` are installed besides the set-up's)."""
        if path not in self._pages:
            name = re.sub(r"\W", "-", path)
            logs = self._tmp / name
            logs.mkdir()
            standin = StandInProcess("--models", ",".join([*self.models, *extra_models]))
            try:
                keyless = start_minato(standin.url, logs / "keyless.log")
            except RuntimeError:
                standin.stop()
                raise
            try:
                keyed = start_minato(standin.url, logs / "keyed.log", api_keys=USER, admin_keys=ADMIN)
            except RuntimeError:
                stop_minato(keyless)
                standin.stop()
                raise
            workdir = logs / "work"
            workdir.mkdir()
            (workdir / "node_modules").symlink_to(NODE_MODULES)
            self._pages[path] = Page(standin, keyless, keyed, workdir)
        return self._pages[path]

    def close(self) -> None:
        for page in self._pages.values():
            stop_minato(page.keyless)
            stop_minato(page.keyed)
            page.standin.stop()

    def outcome(self, snippet: Snippet) -> Outcome:
        """The snippet's outcome, once every snippet above it on its page has run (as a reader would)."""
        for earlier in SNIPPETS:
            if earlier.path == snippet.path and earlier.line < snippet.line and earlier.directive.skip is None:
                self._outcome(earlier)
        return self._outcome(snippet)

    def _outcome(self, snippet: Snippet) -> Outcome:
        if snippet.id not in self._done:
            self._done[snippet.id] = self.run(snippet, self.page(snippet.path))
        return self._done[snippet.id]

    def run(self, snippet: Snippet, page: Page) -> Outcome:
        server = page.keyed if uses_keys(snippet) else page.keyless
        address = server.url.removeprefix("http://")
        code = rewrite(snippet.code, address, KEYS)
        _make_images(code, page.workdir)
        scratch = Path(tempfile.mkdtemp(prefix=f".{snippet.line}-", dir=page.workdir))
        if snippet.kind == "sh":
            argv, env = _shell(code, snippet.directive, scratch)
        else:
            argv, env = _client(snippet, code, address, page.workdir, scratch)
        try:
            done = subprocess.run(  # noqa: S603 - the docs' own snippet, run as a reader would
                argv, check=False, cwd=page.workdir, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return Outcome(False, f"{snippet.id} did not finish within {SNIPPET_TIMEOUT_S:.0f} s:\n{code}")
        statuses = [int(status) for status in _STATUS.findall(done.stderr)]
        ok = done.returncode == 0 and _as_expected(snippet, statuses, done.stdout)
        report = (
            f"{snippet.id} ({snippet.kind}, {'keyed' if server is page.keyed else 'keyless'} Minato) "
            f"exited {done.returncode}, HTTP statuses {statuses}"
            f"{f', expected {snippet.directive.expect}' if snippet.directive.expect else ''}\n"
            f"--- as run:\n{code}--- stdout:\n{done.stdout[-3000:]}\n--- stderr:\n{done.stderr[-3000:]}"
        )
        return Outcome(ok, report)


def _as_expected(snippet: Snippet, statuses: list[int], stdout: str) -> bool:
    if snippet.kind != "sh":
        return bool(stdout.strip())  # every client snippet prints what it got
    if not statuses:
        return False
    if snippet.directive.expect is not None:
        return all(status == snippet.directive.expect for status in statuses)
    return all(200 <= status < 300 for status in statuses)


def _shell(code: str, directive: Directive, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """``/bin/sh -e`` with a ``.curlrc`` that bounds every curl and reports every status."""
    options = [
        "silent",
        "show-error",
        f"max-time = {CURL_MAX_TIME_S}",
        "connect-timeout = 10",
        'write-out = "%{stderr}snippet-status %{http_code}\\n"',
    ]
    if directive.expect is None:
        options.append("fail-with-body")
    (scratch / ".curlrc").write_text("\n".join(options) + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(scratch), "CURL_HOME": str(scratch), "LANG": "C.UTF-8"}
    return ["/bin/sh", "-e", "-c", code], env


def _client(
    snippet: Snippet, code: str, address: str, workdir: Path, scratch: Path
) -> tuple[list[str], dict[str, str]]:
    """The project's interpreter or node, in an environment holding no client settings but the snippet's own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(_CLIENT_ENV) and not name.lower().endswith("_proxy")
    }
    env.update({name: rewrite(value, address, KEYS) for name, value in snippet.directive.env})
    env["HOME"] = str(scratch)
    if snippet.kind == "python":
        script = workdir / f"snippet-{snippet.line}.py"
        script.write_text(code)
        return [sys.executable, str(script)], env
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ollama").is_dir():
        pytest.fail("the JavaScript snippets need node and ollama-js: run `make install`")
    script = workdir / f"snippet-{snippet.line}.mjs"
    script.write_text(code)
    return [node, str(script)], env


def _make_images(code: str, workdir: Path) -> None:
    """The image files a snippet uploads, under the names it uses, if they are not there yet."""
    for name in _IMAGE_NAME.findall(code):
        target = workdir / name
        if target.exists():
            continue
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGES:
            pytest.fail(f"no test image for {name}: add one for {suffix} to IMAGES")
        target.write_bytes(IMAGES[suffix])


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    running = Runner(tmp_path_factory.mktemp("snippets"))
    yield running
    running.close()


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_the_snippet_runs_as_written(snippet: Snippet, runner: Runner) -> None:
    if snippet.directive.skip is not None:
        assert snippet.directive.skip in ALLOWED_SKIPS, (
            f"{snippet.id}: {snippet.directive.skip!r} is not a listed reason"
        )
        pytest.skip(f"{snippet.id}: {snippet.directive.skip}")
    outcome = runner.outcome(snippet)

    assert outcome.ok, outcome.report


def test_skipped_snippets_are_few_and_each_for_a_listed_reason() -> None:
    skipped = Counter(s.directive.skip for s in SNIPPETS if s.directive.skip is not None)

    assert set(skipped) <= set(ALLOWED_SKIPS), f"unlisted reasons: {set(skipped) - set(ALLOWED_SKIPS)}"
    assert all(skipped[reason] <= ALLOWED_SKIPS[reason] for reason in skipped), skipped
    assert sum(skipped.values()) <= sum(ALLOWED_SKIPS.values())


def _synthetic(line: int, kind: Kind, code: str, directive: Directive | None = None) -> Snippet:
    return Snippet("synthetic.md", line, kind, code, directive or Directive())


#: A model that never answers: a stream of it outlasts any bound.
HANGS: Final = "standin/hang:latest"
_CLIENT_CALL: Final = 'client = ollama.Client(host="http://minato:8000", headers={"Authorization": "Bearer <key>"})\n'
#: Snippets a reader could not run as written, and what the report must say about each.
BROKEN: Final = [
    pytest.param(
        _synthetic(1, "sh", "curl 'localhost:8000/llama3.2?message=hi'\n"), "HTTP statuses [404]", id="curl-404"
    ),
    pytest.param(
        _synthetic(2, "sh", "curl 'localhost:8000/health'\ncurl 'localhost:8000/models_lits/'\n"),
        "HTTP statuses [200, 404]",
        id="curl-the-second-command-fails",
    ),
    pytest.param(
        _synthetic(3, "sh", "curl -H 'Authorization: Bearer <key>' 'localhost:8000/health'\n", Directive(expect=401)),
        "HTTP statuses [200], expected 401",
        id="curl-a-refusal-that-is-not-refused",
    ),
    pytest.param(
        _synthetic(4, "sh", "curl -N 'localhost:8000/stream/standin/hang?message=hi'\n"),
        "exited 28",  # curl's "operation timed out": the stream outlasts the bound
        id="curl-a-stream-that-does-not-end-in-time",
    ),
    pytest.param(
        _synthetic(
            5,
            "python",
            "import ollama\n" + _CLIENT_CALL + 'print(client.chat(model="llama3.2", messages=[]).message.content)\n',
        ),
        "model 'llama3.2' not found (status code: 404)",
        id="python-404",
    ),
    pytest.param(_synthetic(6, "python", "import ollama\n"), "exited 0", id="python-that-shows-nothing"),
    pytest.param(
        _synthetic(
            7,
            "js",
            'import { Ollama } from "ollama";\n'
            'const ollama = new Ollama({ host: "http://minato:8000", headers: { Authorization: "Bearer <key>" } });\n'
            'console.log(await ollama.chat({ model: "llama3.2", messages: [{ role: "user", content: "hi" }] }));\n',
        ),
        "status_code: 404",
        id="js-404",
    ),
]


@pytest.mark.parametrize(("snippet", "why"), BROKEN)
def test_a_snippet_that_does_not_work_as_written_fails(snippet: Snippet, why: str, runner: Runner) -> None:
    outcome = runner.run(snippet, runner.page("synthetic.md", HANGS))

    assert not outcome.ok, outcome.report
    assert why in outcome.report


def test_a_declared_refusal_passes_when_minato_refuses(runner: Runner) -> None:
    refused = _synthetic(8, "sh", "curl 'localhost:8000/llama3.2:1b?message=hi'\n", Directive(expect=401))

    outcome = runner.run(refused, runner.page("synthetic.md", HANGS))

    assert outcome.ok, outcome.report
    assert "HTTP statuses [401]" in outcome.report
