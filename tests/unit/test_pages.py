"""The pages' static files load nothing from another origin."""

from __future__ import annotations

import re

import pytest

from minato.web.pages.playground import PLAYGROUND_DIRECTORY

pytestmark = pytest.mark.anyio


def test_the_page_loads_nothing_from_another_origin() -> None:
    """Minato runs where there is no internet: every file the page needs is its own."""
    for file in PLAYGROUND_DIRECTORY.iterdir():
        text = file.read_text()
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), file.name
        assert "<script>" not in text, "an inline script would break under the page's own policy"
        assert " style=" not in text, "so would an inline style"
