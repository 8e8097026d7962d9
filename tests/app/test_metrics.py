"""Prometheus metrics: counters move, histograms observe, gauges come back down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.types import Message
from prometheus_client.parser import text_string_to_metric_families

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import chat_answer, chat_done, chat_token, ndjson
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


async def _samples(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_an_answer_counts_a_request_its_duration_and_its_tokens(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())

    await client.get("/llama3.2", params={"message": "hi"})
    samples = await _samples(client)

    labels = {"route": "/{model_name}", "method": "GET", "status": "200", "model": "llama3.2:latest"}
    assert _value(samples, "minato_requests_total", **labels) == 1
    assert _value(samples, "minato_request_duration_seconds_count", route="/{model_name}") == 1
    assert _value(samples, "minato_tokens_generated_total", model="llama3.2:latest") == 3
    assert _value(samples, "minato_tokens_per_second_count", model="llama3.2:latest") == 1


async def test_a_stream_observes_its_first_token_and_leaves_no_stream_in_flight(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, content=ndjson(chat_token("a"), chat_token("b"), chat_done(eval_count=2)))

    response = await client.get("/stream/llama3.2", params={"message": "hi"})
    samples = await _samples(client)

    assert response.text == "ab"
    assert _value(samples, "minato_time_to_first_token_seconds_count", model="llama3.2:latest") == 1
    assert _value(samples, "minato_tokens_generated_total", model="llama3.2:latest") == 2
    assert _value(samples, "minato_streams_in_flight") == 0


async def test_upstream_failures_are_counted_by_kind(client: Client, ollama: ServedOllama) -> None:
    # Minato learns the model list first (it keeps it a while), then Ollama stops: the generations are refused.
    ollama.post("/api/chat").respond(200, json=chat_answer())
    assert (await client.get("/llama3.2", params={"message": "warm"})).status_code == 200
    ollama.down()

    await client.get("/llama3.2", params={"message": "hi"})
    await client.get("/stream/llama3.2", params={"message": "hi"})
    samples = await _samples(client)

    assert _value(samples, "minato_upstream_errors_total", kind="OllamaUnavailableError") == 2
    assert (
        _value(
            samples, "minato_requests_total", route="/{model_name}", method="GET", status="503", model="llama3.2:latest"
        )
        == 1
    )


async def test_a_mid_stream_failure_is_counted(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, content=ndjson(chat_token("a"), {"error": "boom"}))

    await client.get("/stream/llama3.2", params={"message": "hi"}, headers={"Accept": "application/x-ndjson"})
    samples = await _samples(client)

    assert _value(samples, "minato_upstream_errors_total", kind="UpstreamError") == 1


async def test_bad_input_is_counted_but_not_as_an_upstream_error(client: Client, ollama: ServedOllama) -> None:
    await client.get("/llama3.2", params={"message": ""})
    samples = await _samples(client)

    labels = {"route": "/{model_name}", "method": "GET", "status": "422", "model": "llama3.2:latest"}
    assert _value(samples, "minato_requests_total", **labels) == 1
    assert not [key for key in samples if key[0] == "minato_upstream_errors_total"]


@pytest.mark.parametrize(("answer", "up"), [(httpx.Response(200, json={"version": "0.33.0"}), 1), (None, 0)])
async def test_the_probe_reports_whether_ollama_answers(
    settings: Settings, ollama: ServedOllama, answer: httpx.Response | None, up: float
) -> None:
    route = ollama.get("/api/version")
    if answer is None:
        route.mock(side_effect=httpx.ConnectError("refused"))
    else:
        route.mock(return_value=answer)
    probing = msgspec.structs.replace(settings, ollama_probe_interval=30)
    app = create_app(probing)

    async with AsyncTestClient(app=app) as client:
        # The probe runs in the background: its answer is asked for, then noted (read until both, bounded).
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            samples = await _samples(client)
            settled = route.called and _value(samples, "minato_ollama_up") == up
            if settled or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)

    assert route.called
    assert _value(samples, "minato_ollama_up") == up


def _series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, label: str) -> set[str]:
    return {dict(labels)[label] for metric, labels in samples if metric == name}


async def test_labels_never_come_from_the_request(client: Client, ollama: ServedOllama) -> None:
    """A hostile loop of invented paths, models and methods adds no label value of its own."""
    ollama.post("/api/chat").respond(404, json={"error": "model 'x' not found"})
    for index in range(200):
        await client.get(f"/no/such/path/{index}/{'x' * 50}")  # neither route nor model: 404
        await client.get(f"/stream/invented-{index}", params={"message": "hi"})  # a route, but no such model
        await client.request("PATCH", f"/health/{index}")  # 404/405 on an unmatched path
    samples = await _samples(client)

    routes = _series(samples, "minato_requests_total", "route")
    models = _series(samples, "minato_requests_total", "model")
    assert "unmatched" in routes
    assert routes <= {"unmatched", "/{model_name}", "/stream/{model_name}", "/metrics"}
    assert models <= {"", "other"}
    assert len([key for key in samples if key[0] == "minato_requests_total"]) <= 6


async def test_a_model_is_labelled_by_the_name_ollama_lists_whatever_its_spelling(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    for spelling in (
        "llama3.2",
        "llama3.2:latest",
        "Llama3.2",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2",
    ):
        assert (await client.get(f"/{spelling}", params={"message": "hi"})).status_code == 200
    samples = await _samples(client)

    labels = {"route": "/{model_name}", "method": "GET", "status": "200", "model": "llama3.2:latest"}
    assert _value(samples, "minato_requests_total", **labels) == 5
    assert _series(samples, "minato_tokens_generated_total", "model") == {"llama3.2:latest"}


async def test_an_abandoned_stream_is_logged_and_counted_as_499_aborted(app: Litestar, ollama: ServedOllama) -> None:
    upstream_closed = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield ndjson(chat_token("a"))
            await asyncio.sleep(30)
            yield ndjson(chat_done())

        async def aclose(self) -> None:
            upstream_closed.set()

    ollama.post("/api/chat").mock(side_effect=lambda _: httpx.Response(200, stream=Endless()))
    first_token_sent = asyncio.Event()

    async def receive() -> Message:
        await first_token_sent.wait()  # the client reads one token, then goes away
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            first_token_sent.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream/llama3.2",
        "raw_path": b"/stream/llama3.2",
        "root_path": "",
        "query_string": b"message=hi",
        "headers": [(b"host", b"minato.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("minato.test", 80),
        "state": {},
    }
    async with AsyncTestClient(app=app) as client:
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(app(scope, receive, send), timeout=10)  # type: ignore[arg-type]
        samples = await _samples(client)

    assert upstream_closed.is_set(), "the call to Ollama is closed at once"
    labels = {"route": "/stream/{model_name}", "method": "GET", "model": "llama3.2:latest"}
    assert _value(samples, "minato_requests_total", **labels, status="499") == 1
    assert _value(samples, "minato_requests_total", **labels, status="200") == 0
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert (line["status"], line["outcome"]) == (499, "aborted")
