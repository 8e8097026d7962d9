"""The Grafana dashboard in ``deploy/grafana``: every series a panel queries is one Minato really
exposes at ``/metrics``, with the labels the query selects and groups by.

Minato is driven in-process first (an answer, a stream, an upstream failure, a refusal by
backpressure, a readiness probe) so that the labelled series exist, as they do in production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import chat_answer, chat_done, chat_token, ndjson
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio

DASHBOARD: Final = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "minato.json"
#: Labels Prometheus adds to every series it scrapes (not in Minato's output).
TARGET_LABELS: Final = frozenset({"instance", "job"})
#: PromQL's words that look like metric names but are not.
KEYWORDS: Final = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR: Final = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER: Final = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE: Final = re.compile(r"\[[^\]]*\]")
_NAME: Final = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_NUMBER: Final = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*([A-Za-z_]\w*)\s*\)")


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


@pytest.fixture(name="exposed")
async def fx_exposed(settings: Settings, ollama: ServedOllama) -> dict[str, set[str]]:
    """Every series name Minato exposes, with its label names, once the labelled series exist."""
    configured = msgspec.structs.replace(settings, max_generations=1, max_queue=0)
    app = create_app(configured)
    ollama.get("/api/version").respond(200, json={"version": "0.12.3"})
    async with AsyncTestClient(app=app) as client:
        ollama.post("/api/chat").respond(200, json=chat_answer())
        assert (await client.get("/llama3.2", params={"message": "hi"})).status_code == 200
        ollama.post("/api/chat").respond(200, content=ndjson(chat_token("Hel"), chat_token("lo"), chat_done()))
        assert (await client.get("/stream/llama3.2", params={"message": "hi"})).status_code == 200
        ollama.post("/api/chat").respond(500, json={"error": "out of memory"})
        assert (await client.get("/llama3.2", params={"message": "hi"})).status_code >= 500
        held = await client.app.state.runtime_slot.runtime.admission.acquire("llama3.2:latest")
        try:  # the one slot is taken and there is no queue: a refusal by backpressure
            assert (await client.get("/llama3.2", params={"message": "hi"})).status_code == 503
        finally:
            held.release()
        assert (await client.get("/ready")).status_code == 200
        text = (await client.get("/metrics")).text
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    return exposed


async def test_every_series_the_dashboard_queries_is_in_minatos_metrics(exposed: dict[str, set[str]]) -> None:
    for title, expr in expressions():
        names = metric_names(expr)
        assert names, f"{title}: no series in {expr!r}"
        for name in names:
            assert name in exposed, f"{title}: {name} is not in /metrics (known: {sorted(exposed)})"


async def test_every_label_the_dashboard_selects_or_groups_by_is_on_its_series(exposed: dict[str, set[str]]) -> None:
    for title, expr in expressions():
        for name, labels in selected_labels(expr).items():
            assert labels <= exposed[name] | TARGET_LABELS, f"{title}: {name} has no {labels - exposed[name]}"
        available = set().union(*(exposed[name] for name in metric_names(expr))) | TARGET_LABELS
        assert grouping_labels(expr) <= available, f"{title}: grouped by {grouping_labels(expr) - available}"


async def test_the_variables_ask_for_labels_minato_series_carry(exposed: dict[str, set[str]]) -> None:
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.fullmatch(variable["query"]["query"])
        assert match, variable["name"]
        assert match[1] in exposed
        assert match[2] in exposed[match[1]] | TARGET_LABELS
