"""The Grafana dashboard in ``deploy/grafana``: every series a panel queries is one Minato really
exposes at ``/metrics``, with the labels the query selects and groups by.

Minato is driven in-process first (an answer, a stream, an upstream failure, a refusal by
backpressure, a readiness probe) so that the labelled series exist, as they do in production.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.dashboard import (
    dashboard,
    expressions,
    grouping_labels,
    metric_names,
    selected_labels,
)
from tests.support.payloads import chat_answer, chat_done, chat_token, ndjson
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio

#: Labels Prometheus adds to every series it scrapes (not in Minato's output).
TARGET_LABELS: Final = frozenset({"instance", "job"})
#: PromQL's words that look like metric names but are not.
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*([A-Za-z_]\w*)\s*\)")


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
