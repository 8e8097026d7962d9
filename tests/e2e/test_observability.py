"""Metrics and request ids with Minato as a real process."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import MinatoServer

pytestmark = pytest.mark.e2e


def _gauge(client: httpx.Client, name: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} is not exposed")


def test_a_slow_stream_counts_as_in_flight_until_the_client_leaves(
    minato: MinatoServer, http: httpx.Client, standin: httpx.Client
) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{minato.url}/stream/standin/slow", params={"message": "hi"}) as response,
    ):
        chunks = response.iter_raw()  # kept: a dropped iterator closes the response (a disconnect)
        next(chunks)
        during = _gauge(http, "minato_streams_in_flight")

    deadline = time.monotonic() + 5
    after = during
    while time.monotonic() < deadline and after:
        after = _gauge(http, "minato_streams_in_flight")
        time.sleep(0.02)
    assert during == 1
    assert after == 0


def test_request_ids_round_trip_and_reach_the_log(minato: MinatoServer, http: httpx.Client) -> None:
    mine = http.get("/health", headers={"X-Request-ID": "trace-abc.123"})
    generated = http.get("/health", headers={"X-Request-ID": "not valid!"})

    assert mine.headers["x-request-id"] == "trace-abc.123"
    assert generated.headers["x-request-id"] != "not valid!"
    assert len(generated.headers["x-request-id"]) == 32
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any('"trace-abc.123"' in line for line in minato.log_lines()):
        time.sleep(0.02)
    assert any('"request_id":"trace-abc.123"' in line for line in minato.log_lines())
