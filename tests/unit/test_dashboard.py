"""The Grafana dashboard in ``deploy/grafana``, read without the app: the PromQL reader, its datasource
variable, and what operators watch."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

pytestmark = pytest.mark.anyio

DASHBOARD: Final = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "minato.json"
#: PromQL's words that look like metric names but are not.
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


def test_the_promql_reader_finds_names_and_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{instance=~"$i", status=~"5.."}[$__rate_interval])))'
        " / on (route) sum(b_total) or vector(0)"
    )

    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert selected_labels(expr) == {"a_bucket": {"instance", "status"}}
    assert grouping_labels(expr) == {"le", "route"}


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


def test_the_dashboard_has_a_datasource_variable_every_query_uses() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    ids = [panel["id"] for panel in _panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_the_dashboard_covers_what_operators_watch() -> None:
    queried = {name for _, expr in expressions() for name in metric_names(expr)}

    assert {
        "minato_requests_total",
        "minato_time_to_first_token_seconds_bucket",
        "minato_tokens_per_second_bucket",
        "minato_streams_in_flight",
        "minato_queue_depth",
        "minato_rejections_total",
        "minato_backend_up",
        "minato_key_tokens_generated_total",
    } <= queried
