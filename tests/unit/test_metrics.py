"""The metrics object alone: a stream is in flight from its first byte until it ends; each kind of
request feeds its series."""

from __future__ import annotations

import pytest
from litestar.types import Message, Receive, Scope, Send
from prometheus_client.parser import text_string_to_metric_families

from minato.auth.caller import Caller, Role
from minato.observability.metrics import Metrics
from minato.observability.record import RequestRecord, record_of
from minato.web.middleware import RequestLogMiddleware

pytestmark = pytest.mark.anyio


async def test_a_stream_is_in_flight_from_its_first_byte_until_it_ends() -> None:
    metrics = Metrics()
    seen: list[float | None] = []

    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        record = record_of(scope)
        assert record is not None
        record.streaming = True
        seen.append(metrics.registry.get_sample_value("minato_streams_in_flight"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(metrics.registry.get_sample_value("minato_streams_in_flight"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(_: Message) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/stream/m", "headers": [], "state": {}}
    await RequestLogMiddleware(streaming_app, metrics)(scope, receive, send)  # type: ignore[arg-type]

    assert seen == [0.0, 1.0]
    assert metrics.registry.get_sample_value("minato_streams_in_flight") == 0.0


def _finished(model: str, tokens: int, caller: Caller | None, first_token: float | None = None) -> RequestRecord:
    record = RequestRecord("id", 0.0)
    record.model, record.caller, record.first_token = model, caller, first_token
    record.note_answer(tokens, 40.0)
    return record


def test_each_kind_of_request_feeds_its_own_series_and_only_those_it_counted() -> None:
    metrics = Metrics()
    alice = Caller("0123456789ab", Role.USER, "alice")
    metrics.observe("/{model_name}", "GET", 200, 0.5, _finished("m", 3, alice))
    metrics.observe("/{model_name}", "GET", 200, 0.5, _finished("m", 4, None))
    metrics.observe("/{model_name}", "BREW", 200, 0.5, _finished("m", 0, None))

    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }
    route = ("route", "/{model_name}")
    assert (
        samples[("minato_requests_total", frozenset({route, ("method", "GET"), ("status", "200"), ("model", "")}))] == 2
    )
    assert (
        samples[("minato_requests_total", frozenset({route, ("method", "other"), ("status", "200"), ("model", "")}))]
        == 1
    )
    assert samples[("minato_request_duration_seconds_count", frozenset({route}))] == 3
    assert samples[("minato_tokens_generated_total", frozenset({("model", "")}))] == 7
    assert samples[("minato_key_tokens_generated_total", frozenset({("model", ""), ("key", "alice")}))] == 3
    assert samples[("minato_key_tokens_generated_total", frozenset({("model", ""), ("key", "anonymous")}))] == 4
    assert samples[("minato_tokens_per_second_count", frozenset({("model", "")}))] == 3
    assert not [name for name, _ in samples if name.startswith("minato_time_to_first_token")], "a whole answer has none"

    metrics.observe("/{model_name}", "GET", 200, 0.5, _finished("m", 3, alice, first_token=0.25))

    text = metrics.exposition().decode()
    assert 'minato_time_to_first_token_seconds_count{model=""} 1.0' in text
    assert 'minato_key_tokens_generated_total{key="alice",model=""} 6.0' in text
