"""The Grafana dashboard in ``deploy/grafana``, read without the app: the PromQL reader, its datasource
variable, and what operators watch."""

from __future__ import annotations

import pytest

from tests.support.dashboard import (
    _panels,
    dashboard,
    expressions,
    grouping_labels,
    metric_names,
    selected_labels,
)

pytestmark = pytest.mark.anyio


#: PromQL's words that look like metric names but are not.
def test_the_promql_reader_finds_names_and_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{instance=~"$i", status=~"5.."}[$__rate_interval])))'
        " / on (route) sum(b_total) or vector(0)"
    )

    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert selected_labels(expr) == {"a_bucket": {"instance", "status"}}
    assert grouping_labels(expr) == {"le", "route"}


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
