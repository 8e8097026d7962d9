"""The runnable examples of the README and ``docs/*.md``, read from the markdown itself.

``tests/e2e/test_readme_snippets.py`` runs every one of them against Minato; nothing here copies a
snippet, so an example added to the docs is picked up (and must run) without touching a test.

What counts as a snippet (a fenced code block):

- ``sh`` (or ``bash``, ``shell``, ``console``) that calls ``curl``;
- ``python`` that imports a client library (``ollama``, ``openai``, ``anthropic``, ``langchain*``);
- ``js`` (or ``javascript``, ``mjs``) that imports the ``ollama`` npm package.

A block may say something about itself in one HTML comment on the line right above it (invisible
once rendered; docs/contributing.md documents it):

- ``<!-- snippet: skip (REASON) -->``: not run; the test accepts only the reasons it lists;
- ``<!-- snippet: expect STATUS -->``: every request of the (curl) block answers STATUS;
- ``<!-- snippet: env NAME=VALUE ... -->``: the environment the (client) block is run with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from markdown_it import MarkdownIt

__all__ = [
    "DOCS",
    "Directive",
    "Kind",
    "Snippet",
    "SnippetError",
    "all_snippets",
    "extract",
    "markdown_files",
    "rewrite",
    "setup_models",
    "uses_keys",
]

REPO: Final = Path(__file__).resolve().parents[2]
#: The pages users copy from.
DOCS: Final = ("README.md", "docs/*.md")

Kind = Literal["sh", "python", "js"]
_SHELLS: Final = frozenset({"sh", "bash", "shell", "console"})
_PYTHON: Final = frozenset({"python", "py"})
_JS: Final = frozenset({"js", "javascript", "mjs"})
_CURL: Final = re.compile(r"(?m)(?:^|[\s;&|(])curl\s")
_PYTHON_CLIENT: Final = re.compile(r"(?m)^\s*(?:from|import)\s+(?:ollama|openai|anthropic|langchain\w*)\b")
_JS_CLIENT: Final = re.compile(r"""(?m)^\s*import\b[^;\n]*\bfrom\s+["']ollama["']""")
_MARK: Final = re.compile(r"<!--\s*snippet:")
_DIRECTIVE: Final = re.compile(r"^<!--\s*snippet:\s*(?P<body>.*?)\s*-->$")
_SKIP: Final = re.compile(r"^skip\s+\((?P<reason>[^()]+)\)$")
_EXPECT: Final = re.compile(r"^expect\s+(?P<status>[1-5]\d\d)$")
_ENV: Final = re.compile(r"^env((?:\s+[A-Z][A-Z0-9_]*=\S+)+)$")
#: Where the docs say Minato is: the compose set-up's port on this machine, or a host named minato.
ADDRESS: Final = re.compile(r"\b(?:localhost|127\.0\.0\.1|minato):8000\b")
#: The placeholders the docs write a key as, by the role the key needs.
USER_KEY: Final = "<key>"
ADMIN_KEY: Final = "<admin key>"
FINGERPRINT: Final = "<fingerprint>"
PLACEHOLDERS: Final = (USER_KEY, ADMIN_KEY, FINGERPRINT)
_INSTALL: Final = re.compile(r"/install/([\w.:/-]+?)['\"?\s]")


class SnippetError(ValueError):
    """A snippet directive the test cannot honour: misspelt, misplaced or on the wrong kind of block."""


@dataclass(frozen=True)
class Directive:
    """What a block's ``<!-- snippet: ... -->`` line says about it."""

    skip: str | None = None
    expect: int | None = None
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Snippet:
    """One runnable block: where it is, what it is, and what its directive says."""

    path: str  # relative to the repository, e.g. "README.md"
    line: int  # 1-based line of the opening fence
    kind: Kind
    code: str
    directive: Directive = field(default_factory=Directive)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def markdown_files(root: Path = REPO) -> list[Path]:
    """README.md and every docs/*.md, in that order."""
    files: list[Path] = []
    for pattern in DOCS:
        files.extend(sorted(root.glob(pattern)))
    return files


def _kind(info: str, code: str) -> Kind | None:
    language = info.split(maxsplit=1)[0].lower() if info.strip() else ""
    if language in _SHELLS and _CURL.search(code):
        return "sh"
    if language in _PYTHON and _PYTHON_CLIENT.search(code):
        return "python"
    if language in _JS and _JS_CLIENT.search(code):
        return "js"
    return None


def _directive(text: str, where: str) -> Directive:
    match = _DIRECTIVE.match(text.strip())
    assert match is not None
    body = match["body"]
    if skip := _SKIP.match(body):
        return Directive(skip=skip["reason"].strip())
    if expect := _EXPECT.match(body):
        return Directive(expect=int(expect["status"]))
    if env := _ENV.match(body):
        pairs = tuple(tuple(pair.split("=", 1)) for pair in env[1].split())
        return Directive(env=tuple((name, value) for name, value in pairs))
    raise SnippetError(
        f"{where}: unknown snippet directive {body!r} (skip (REASON), expect STATUS or env NAME=VALUE ...)"
    )


def extract(text: str, path: str) -> list[Snippet]:
    """Every snippet of one markdown page, in page order, with its directive."""
    tokens = MarkdownIt("commonmark").parse(text)
    snippets: list[Snippet] = []
    for index, token in enumerate(tokens):
        where = f"{path}:{token.map[0] + 1 if token.map else '?'}"
        # A directive anywhere but on its own line right above a block would be silently ignored.
        if token.type == "inline" and any(
            child.type == "html_inline" and _MARK.search(child.content) for child in token.children or []
        ):
            raise SnippetError(f"{where}: a snippet directive inside a paragraph (put it on its own line)")
        if token.type == "html_block" and _MARK.search(token.content):
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if not _DIRECTIVE.match(token.content.strip()) or following is None or following.type != "fence":
                raise SnippetError(f"{where}: a snippet directive must be one line right above a code block")
        if token.type != "fence" or token.map is None:
            continue
        previous = tokens[index - 1] if index else None
        directive = Directive()
        if previous is not None and previous.type == "html_block" and _MARK.search(previous.content):
            directive = _directive(previous.content, where)
        kind = _kind(token.info, token.content)
        if kind is None:
            if directive != Directive():
                raise SnippetError(f"{where}: a snippet directive above a block that is not a snippet")
            continue
        if directive.expect is not None and kind != "sh":
            raise SnippetError(f"{where}: `expect` applies to curl blocks only")
        if directive.env and kind == "sh":
            raise SnippetError(f"{where}: a curl block sets its own environment")
        snippets.append(Snippet(path=path, line=token.map[0] + 1, kind=kind, code=token.content, directive=directive))
    return snippets


def uses_keys(snippet: Snippet) -> bool:
    """Whether the snippet is about a Minato with keys: it names a key, or shows a request without one refused."""
    text = snippet.code + "".join(value for _, value in snippet.directive.env)
    return any(p in text for p in PLACEHOLDERS) or snippet.directive.expect == 401


def rewrite(text: str, address: str, keys: Mapping[str, str]) -> str:
    """``text`` pointed at ``address`` (``host:port``), with each key placeholder replaced by its key.

    Only the address and the placeholders change: the snippet runs as a reader would paste it.
    """
    text = ADDRESS.sub(address, text)
    for placeholder, key in keys.items():
        text = text.replace(placeholder, key)
    return text


def setup_models(readme: str) -> list[str]:
    """The models the README's "Set up" section tells a new user to pull, in its order."""
    match = re.search(r"(?ms)^## Set up\n(.*?)(?=^## )", readme)
    if match is None:
        raise SnippetError('README.md has no "## Set up" section')
    models = list(dict.fromkeys(_INSTALL.findall(match[1])))
    if not models:
        raise SnippetError("README.md's \"Set up\" pulls no model (`curl -X POST 'localhost:8000/install/...'`)")
    return models


def all_snippets(files: Iterable[Path], root: Path = REPO) -> list[Snippet]:
    """The snippets of every file, file by file, each in page order."""
    found: list[Snippet] = []
    for file in files:
        found.extend(extract(file.read_text(), file.relative_to(root).as_posix()))
    return found
