"""How the suite is split: ``make test`` leaves the load and soak tests (marker ``load``) out, so its
verdict does not depend on how busy the machine is; ``make test-load`` runs exactly those; CI runs
both, the main suite first.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
#: The tests that drive hundreds of connections or measure Minato under load, by module.
LOAD_TESTS: Final = (
    ("tests.load.test_load", "test_hundreds_of_streams_with_disconnects_leave_nothing_behind"),
    (
        "tests.load.test_native_door",
        "test_a_hundred_concurrent_native_chat_streams_some_abandoned_leave_nothing_behind",
    ),
    ("tests.load.test_exposure", "test_uploads_queued_behind_a_busy_slot_wait_outside_minatos_memory"),
)
#: Heavy (a Prometheus, two stand-ins, Redis) but functional: it stays in the main suite.
FUNCTIONAL: Final = (
    "tests.e2e.test_prometheus",
    "test_prometheus_scrapes_minato_and_every_dashboard_query_returns_data",
)


def _recipe(target: str) -> list[str]:
    """The arguments ``make <target>`` gives pytest (the Makefile's recipe, variables left out)."""
    match = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"no `{target}` target in the Makefile"
    words = shlex.split(match[1])
    assert words[:3] == ["$(UV)", "run", "pytest"], match[1]
    return [word for word in words[3:] if not word.startswith("$(")]


def _marks(module_name: str, name: str) -> set[str]:
    """The marker names a test carries: its own and its module's ``pytestmark``."""
    module = importlib.import_module(module_name)
    own = getattr(getattr(module, name), "pytestmark", [])
    shared = getattr(module, "pytestmark", [])
    return {mark.name for mark in [*own, *(shared if isinstance(shared, list) else [shared])]}


def test_make_test_leaves_the_load_tests_out_and_make_test_load_runs_them() -> None:
    assert _recipe("test") == ["-m", "not load"]
    assert _recipe("test-load") == ["-m", "load"]
    for test in LOAD_TESTS:
        assert "load" in _marks(*test), test
    assert "load" not in _marks(*FUNCTIONAL)


def test_ci_runs_the_main_suite_then_the_load_tests() -> None:
    commands = [line.split()[:2] for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make")]

    assert commands == [["make", "lint"], ["make", "test"], ["make", "test-load"]]


def test_every_load_test_lives_in_tests_load_and_every_test_there_is_one() -> None:
    load = ROOT / "tests" / "load"
    for path in sorted(load.glob("test_*.py")):
        module = f"tests.load.{path.stem}"
        tests = [name for name in vars(importlib.import_module(module)) if name.startswith("test_")]
        assert tests, module
        for name in tests:
            assert "load" in _marks(module, name), f"{module}::{name} is in tests/load without the load marker"
    elsewhere = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if load not in path.parents and re.search(r"mark\.load\b", path.read_text())
    ]
    assert elsewhere == [], "a load test outside tests/load"
