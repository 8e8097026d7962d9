"""The shipped Grafana dashboard and a reader of its PromQL: which metrics and labels its panels use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

DASHBOARD: Final = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "minato.json"


KEYWORDS: Final = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


_SELECTOR: Final = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")


_MATCHER: Final = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


_RANGE: Final = re.compile(r"\[[^\]]*\]")


_NAME: Final = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)\b(?!\s*\()")


_NUMBER: Final = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, keywords and label names left out)."""
    text = _RANGE.sub(" ", _GROUPING.sub(" ", _STRING.sub('""', expr)))
    text = _SELECTOR.sub(lambda m: f" {m[1] or ''} ", text)
    return {name for name in _NAME.findall(_NUMBER.sub(" ", text)) if name not in KEYWORDS}


def selected_labels(expr: str) -> dict[str, set[str]]:
    """The label names each series is selected by, in ``name{label="..."}``."""
    selected: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
        selected.setdefault(name, set()).update(_MATCHER.findall(matchers))
    return selected


def grouping_labels(expr: str) -> set[str]:
    """The label names of every ``by (...)``, ``without (...)`` and ``on (...)`` of an expression."""
    return {
        label.strip() for group in _GROUPING.findall(_STRING.sub('""', expr)) for label in group.split(",") if label
    }


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions() -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard, with the title of the panel it belongs to."""
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]
