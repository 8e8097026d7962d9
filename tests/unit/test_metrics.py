"""The metrics object alone: a stream is in flight from its first byte until it ends."""

from __future__ import annotations

import pytest
from litestar.types import Message, Receive, Scope, Send

from minato.observability.metrics import Metrics
from minato.observability.record import record_of
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
