"""The README and .env.example must describe every setting and every route the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from litestar.handlers import HTTPRouteHandler

from minato.handlers import ROUTE_HANDLERS
from minato.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


@pytest.mark.parametrize("field", Settings.__struct_fields__)
def test_every_setting_is_in_the_readme_table_and_env_example(field: str) -> None:
    variable = f"MINATO_{field.upper()}"

    assert re.search(rf"^\| `{variable}` \|", README, re.MULTILINE), f"{variable} missing from README"
    assert f"# {variable}=" in ENV_EXAMPLE, f"{variable} missing from .env.example"


def test_the_readme_documents_no_setting_that_does_not_exist() -> None:
    documented = set(re.findall(r"^\| `MINATO_([A-Z_]+)` \|", README, re.MULTILINE))

    assert documented == {field.upper() for field in Settings.__struct_fields__}


def _routes() -> list[tuple[str, str]]:
    """Every ``(method, path)`` that ``ROUTE_HANDLERS`` registers, sorted."""
    routes: set[tuple[str, str]] = set()
    for handler in ROUTE_HANDLERS:
        assert isinstance(handler, HTTPRouteHandler), f"{handler!r} is not an HTTP route handler"
        routes.update((method, path) for path in handler.paths for method in handler.http_methods)
    return sorted(routes)


@pytest.mark.parametrize("route", _routes())
def test_every_route_has_a_readme_section_with_a_curl_example(route: tuple[str, str]) -> None:
    method, path = route
    shown = path.replace("{model_name:path}", "{model}").replace("{session_id:str}", "{session}")

    # Litestar normalises away a trailing slash; the seed API documents /models_list/ with one.
    assert f"`{method} {shown}`" in README or f"`{method} {shown}/`" in README
    assert re.search(rf"curl[^\n]*localhost:8000{re.escape(shown.split('{')[0])}", README)
