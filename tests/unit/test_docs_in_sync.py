"""The docs pages and .env.example must describe every setting and every route the code has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Final

import pytest
from litestar.handlers import HTTPRouteHandler

from minato.settings import Settings
from minato.web.api import ROUTE_HANDLERS
from tools.docs import COMMAND, GENERATED, field_docs, generated, settings_table

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PAGE = (ROOT / "docs" / "settings.md").read_text()
#: Every docs page: a route's section and its curl example may be on any of them.
DOCS = "\n".join(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
SOURCE = ROOT / "src"


@pytest.mark.parametrize("field", Settings.__struct_fields__)
def test_every_setting_is_in_the_settings_page_and_env_example(field: str) -> None:
    variable = f"MINATO_{field.upper()}"

    assert re.search(rf"^\| `{variable}` \|", SETTINGS_PAGE, re.MULTILINE), f"{variable} missing from docs/settings.md"
    assert f"# {variable}=" in ENV_EXAMPLE, f"{variable} missing from .env.example"


def test_the_settings_page_documents_no_setting_that_does_not_exist() -> None:
    documented = set(re.findall(r"^\| `MINATO_([A-Z_]+)` \|", SETTINGS_PAGE, re.MULTILINE))

    assert documented == {field.upper() for field in Settings.__struct_fields__}


@pytest.mark.parametrize("name", GENERATED)
def test_the_generated_docs_are_what_the_code_generates_now(name: str) -> None:
    """docs/settings.md and .env.example are written from Settings: a changed field needs them written anew."""
    assert generated(ROOT / name) == (ROOT / name).read_text(), f"{name} is stale: run `{COMMAND}`"


def test_the_settings_table_reads_each_variables_type_default_and_words_from_the_struct() -> None:
    rows = {row.split(" | ")[0]: row for row in settings_table().splitlines()}
    docs = field_docs()

    assert rows["| `MINATO_LOG_LEVEL`"] == (
        f"| `MINATO_LOG_LEVEL` | `info` | `debug`, `info`, `warning` or `error` | {docs['log_level']} |"
    )
    assert rows["| `MINATO_PORT`"].startswith("| `MINATO_PORT` | `8000` | integer 0 to 65535 |")
    assert rows["| `MINATO_WORKERS`"].startswith("| `MINATO_WORKERS` | `1` | integer ≥ 1 |")
    assert rows["| `MINATO_BACKEND_COOLDOWN`"].startswith("| `MINATO_BACKEND_COOLDOWN` | `15` | number > 0 |")
    assert rows["| `MINATO_OPEN_PROBES`"].startswith("| `MINATO_OPEN_PROBES` | `false` | `true` or `false` |")
    assert rows["| `MINATO_DEFAULT_KEEP_ALIVE`"].startswith("| `MINATO_DEFAULT_KEEP_ALIVE` | unset | number or text |")
    assert set(docs) == set(Settings.__struct_fields__)
    assert all(docs.values())


#: A code span naming a source path: ``minato/web/api/``, ``minato/settings.py``, or ``minato/upstream/pool``
#: (a module or a package: either makes it exist, so a module split into a package keeps its line).
_SOURCE_PATH: Final = re.compile(r"`(?:src/)?(minato(?:/[\w.]+)*/?)`")


def _named_sources() -> set[str]:
    return {path.rstrip("/") for path in _SOURCE_PATH.findall(ARCHITECTURE)}


#: Every package under src/minato (a folder with an ``__init__.py``), as ``minato/web/api``.
PACKAGES: Final = sorted(str(init.parent.relative_to(SOURCE)) for init in (SOURCE / "minato").glob("*/**/__init__.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_its_line_in_the_architecture_page(package: str) -> None:
    """A new package is a new place a change may go: docs/architecture.md says what goes there."""
    assert package in _named_sources(), f"docs/architecture.md does not name `{package}/`"


def test_every_source_path_the_architecture_page_names_exists() -> None:
    missing = [
        path
        for path in sorted(_named_sources())
        if not (SOURCE / path).exists() and not (SOURCE / f"{path}.py").exists()
    ]

    assert not missing, f"docs/architecture.md names what src/ does not have: {missing}"


def test_the_architecture_page_lists_the_layers_the_import_contract_enforces() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(contract["layers"] for contract in contracts if contract["type"] == "layers")
    block = re.search(r"```text\n(minato\..*?)```", ARCHITECTURE, re.DOTALL)

    assert block is not None, "docs/architecture.md has no ```text block of the layers"
    assert block[1].splitlines() == layers


def _routes() -> list[tuple[str, str]]:
    """Every ``(method, path)`` that ``ROUTE_HANDLERS`` registers, sorted."""
    routes: set[tuple[str, str]] = set()
    for handler in ROUTE_HANDLERS:
        assert isinstance(handler, HTTPRouteHandler), f"{handler!r} is not an HTTP route handler"
        routes.update((method, path) for path in handler.paths for method in handler.http_methods)
    return sorted(routes)


@pytest.mark.parametrize("route", _routes())
def test_every_route_has_a_docs_section_with_a_curl_example(route: tuple[str, str]) -> None:
    method, path = route
    shown = path.replace("{model_name:path}", "{model}").replace("{session_id:str}", "{session}")

    # Litestar normalises away a trailing slash; the seed API documents /models_list/ with one.
    assert f"`{method} {shown}`" in DOCS or f"`{method} {shown}/`" in DOCS
    assert re.search(rf"curl[^\n]*localhost:8000{re.escape(shown.split('{')[0])}", DOCS)


def test_the_readme_is_a_page_a_newcomer_reads_in_five_minutes() -> None:
    """What Minato is, the two set-up commands, three examples, the SDKs, links: the rest is in docs/."""
    assert len(README.splitlines()) <= 200
    assert "docker compose up -d" in README
    assert "make test" in README
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in README, f"the README links no {page.name}"


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings (code blocks left out)."""
    anchors: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.*)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return anchors


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_between_the_pages_leads_somewhere(page: Path) -> None:
    """The README and docs/ link to each other's sections: each file and anchor a link names exists."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text())):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"
