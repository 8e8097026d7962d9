"""A process environment without Minato's variables, so a test reads only the settings it sets."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(name="monkeypatch")
def fx_clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """``monkeypatch`` with every ``MINATO_*`` variable and ``OLLAMA_HOST`` removed from the process."""
    for key in list(os.environ):
        if key.startswith("MINATO_") or key == "OLLAMA_HOST":
            monkeypatch.delenv(key)
    return monkeypatch
