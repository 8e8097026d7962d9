"""One log line per request, request ids in and out, no prompt in any log, and JSON output."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from typing import Any

import msgspec
import pytest
import structlog
from litestar import Litestar
from litestar.exceptions import LitestarException
from litestar.testing import AsyncTestClient

from minato.observability.logging import configure_logging
from minato.settings import Settings
from minato.web.app import create_app
from tests.support.logs import captured, fx_restore_logging  # noqa: F401 - fixtures, found by name
from tests.support.payloads import chat_answer, chat_done, chat_token, ndjson, not_found, streamed
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
SECRET = "my secret prompt about kittens"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def requests_in(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == "request"]


def everything_logged(events: list[dict[str, Any]]) -> str:
    return " ".join(f"{key}={value!r}" for event in events for key, value in event.items())


async def test_a_request_is_logged_once_with_its_facts(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())

    with captured() as events:
        response = await client.get("/llama3.2:1b", params={"message": "hi"}, headers={"x-request-id": "abc-123"})

    assert response.status_code == 200
    assert route.called
    (line,) = requests_in(events)
    assert line["method"] == "GET"
    assert line["route"] == "/{model_name}"
    assert line["model"] == "llama3.2:1b"
    assert line["status"] == 200
    assert line["outcome"] == "ok"
    assert line["tokens"] == 3
    assert line["request_id"] == "abc-123"
    assert line["log_level"] == "info"
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0


async def test_a_stream_is_logged_once_with_its_token_count(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(
        200, content=ndjson(chat_token("a"), chat_token("b"), chat_done(eval_count=2))
    )

    with captured() as events:
        response = await client.get("/stream/llama3.2", params={"message": "hi"})

    assert response.text == "ab"
    assert route.called
    (line,) = requests_in(events)
    assert line["route"] == "/stream/{model_name}"
    assert line["model"] == "llama3.2"
    assert line["status"] == 200
    assert line["tokens"] == 2
    assert GENERATED_ID.fullmatch(line["request_id"])


async def test_an_upstream_failure_is_logged_with_the_status_the_client_got(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(404, json=not_found("nope"))

    with captured() as events:
        response = await client.get("/nope", params={"message": SECRET})

    (line,) = requests_in(events)
    assert response.status_code == line["status"] == 404
    assert line["model"] == "nope"
    assert line["tokens"] is None


async def test_an_aborted_plain_text_stream_is_logged_as_aborted(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(
        side_effect=lambda _: streamed(ndjson(chat_token("part")), ndjson({"error": "runner crashed"}))
    )

    with captured() as events, pytest.raises(LitestarException):
        await client.get("/stream/llama3.2", params={"message": SECRET})

    (line,) = requests_in(events)
    assert line["outcome"] == "aborted"
    assert line["status"] == 200
    failures = [event for event in events if event["event"] == "stream_failed"]
    assert [event["detail"] for event in failures] == ["Ollama failed mid-stream: runner crashed"]
    assert failures[0]["request_id"] == line["request_id"]


@pytest.mark.parametrize(
    ("path", "params", "headers"),
    [
        pytest.param("/llama3.2", {"message": SECRET, "system_prompt": SECRET}, {}, id="generate"),
        pytest.param("/stream/llama3.2", {"message": SECRET}, {}, id="stream-text"),
        pytest.param("/stream/llama3.2", {"message": SECRET}, {"accept": "text/event-stream"}, id="stream-sse"),
        pytest.param("/llama3.2", {"message": SECRET, "temperature": "-1"}, {}, id="invalid-parameter"),
        pytest.param("/llama3.2", {"message": SECRET * 100}, {}, id="too-long"),
        pytest.param("/-bad", {"message": SECRET}, {}, id="invalid-model"),
    ],
)
async def test_neither_the_prompt_nor_the_query_string_is_ever_logged(
    client: Client, ollama: ServedOllama, path: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    ollama.post("/api/chat").mock(
        side_effect=lambda request: (
            streamed(ndjson(chat_token("ok"), chat_done()))
            if b'"stream":true' in request.content
            else streamed(json.dumps(chat_answer()).encode())
        )
    )

    with captured() as events:
        response = await client.get(path, params=params, headers=headers)

    assert response.status_code in {200, 422}
    assert requests_in(events)
    text = everything_logged(events)
    assert "kittens" not in text
    assert "message=" not in text
    assert "?" not in text


async def test_a_valid_request_id_is_echoed(client: Client) -> None:
    with captured() as events:
        response = await client.get("/health", headers={"x-request-id": "abc-123"})

    assert response.headers["x-request-id"] == "abc-123"
    assert requests_in(events)[0]["request_id"] == "abc-123"


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("a" * 200, id="too-long"),
        pytest.param("has spaces in it", id="spaces"),
        pytest.param("<script>", id="markup"),
        pytest.param("", id="empty"),
    ],
)
async def test_an_invalid_request_id_is_replaced_with_a_generated_one(client: Client, given: str) -> None:
    with captured() as events:
        response = await client.get("/health", headers={"x-request-id": given})

    generated = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(generated)
    assert requests_in(events)[0]["request_id"] == generated


async def test_requests_get_different_generated_ids(client: Client) -> None:
    first = await client.get("/health")
    second = await client.get("/health")

    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/health", 200, id="ok"),
        pytest.param("GET", "/stream/", 404, id="route-not-found"),
        pytest.param("GET", "/llama3.2", 422, id="invalid"),
        pytest.param("POST", "/health", 405, id="wrong-method"),
    ],
)
async def test_every_response_carries_a_request_id(client: Client, method: str, path: str, status: int) -> None:
    with captured() as events:
        response = await client.request(method, path)

    assert response.status_code == status
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])
    (line,) = requests_in(events)
    assert line["status"] == status
    assert line["request_id"] == response.headers["x-request-id"]


async def test_a_route_that_does_not_exist_is_logged_by_its_path(client: Client) -> None:
    with captured() as events:
        await client.get("/stream/")

    assert requests_in(events)[0]["route"] == "/stream/"


async def test_a_long_path_that_matched_no_route_is_logged_by_its_start_only(client: Client) -> None:
    with captured() as events:
        await client.get("/api/" + "x" * 8000)

    assert requests_in(events)[0]["route"] == ("/api/" + "x" * 8000)[:256]


async def test_the_request_id_does_not_leak_into_later_logs(client: Client) -> None:
    await client.get("/health", headers={"x-request-id": "abc-123"})

    with captured() as events:
        structlog.get_logger("test").info("after")

    assert "request_id" not in events[0]


async def test_the_traceback_of_a_real_aborted_stream_is_hidden(
    client: Client, ollama: ServedOllama, restore_logging: None
) -> None:
    ollama.post("/api/chat").mock(
        side_effect=lambda _: streamed(ndjson(chat_token("part")), ndjson({"error": "runner crashed"}))
    )
    with pytest.raises(LitestarException) as caught:
        await client.get("/stream/llama3.2", params={"message": "hi"})
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)

    # What uvicorn does with the exception the app raised.
    logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=caught.value)

    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("path", "headers", "status", "outcome"),
    [
        ("/llama3.2?message=hi", {}, 200, "ok"),
        ("/models_list/", {"X-API-Key": "wrong"}, 401, "refused"),
        ("/models/llama3.2", {"X-API-Key": "log-user-key"}, 405, "client_error"),
        ("/load/llama3.2", {"X-API-Key": "log-user-key"}, 403, "refused"),
        ("/gpt-oss:20b-cloud?message=hi", {"X-API-Key": "log-user-key"}, 403, "refused"),
        ("/llama3.2?message=hi&max_tokens=5", {"X-API-Key": "log-user-key"}, 422, "client_error"),
        ("/no-such-route-or-model", {"X-API-Key": "log-user-key"}, 404, "client_error"),
    ],
)
async def test_a_refusal_and_a_client_error_are_logged_as_such(
    settings: Settings,
    ollama: ServedOllama,
    path: str,
    headers: dict[str, str],
    status: int,
    outcome: str,
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    keyed = msgspec.structs.replace(settings, api_keys=("log-user-key",))
    method = "POST" if path.startswith("/load") else "GET"
    async with AsyncTestClient(app=create_app(keyed)) as client:
        with captured() as events:
            response = await client.request(method, path, headers=headers or {"X-API-Key": "log-user-key"})

    (line,) = requests_in(events)
    assert response.status_code == line["status"] == status
    assert line["outcome"] == outcome


async def test_a_native_stream_ending_with_ollamas_error_line_is_an_upstream_error(
    client: Client, ollama: ServedOllama
) -> None:
    """The client gets Ollama's own error line (Open WebUI shows a cut answer); the operator must see it."""
    ollama.post("/api/chat").mock(
        return_value=streamed(
            ndjson(chat_token("part")), ndjson({"error": "an error was encountered while running the model"})
        )
    )

    with captured() as events:
        response = await client.post("/api/chat", json={"model": "llama3.2", "messages": []})
    metrics = (await client.get("/metrics")).text

    assert response.status_code == 200
    assert response.content.endswith(b'{"error":"an error was encountered while running the model"}\n')
    (line,) = requests_in(events)
    assert line["outcome"] == "upstream_error"
    (failed,) = [event for event in events if event["event"] == "door_stream_failed"]
    assert failed["log_level"] == "warning"
    assert "an error was encountered while running the model" in failed["detail"]
    assert 'minato_upstream_errors_total{kind="StreamError"} 1.0' in metrics


async def test_a_served_app_writes_the_json_request_line_itself(
    settings: Settings, ollama: ServedOllama, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """Configured for JSON (as ``minato serve`` is), the request line skips structlog's chain, with the
    same facts: what a test captures from structlog no longer sees it, stdout does."""
    ollama.post("/api/chat").respond(200, json=chat_answer())
    keyed = msgspec.structs.replace(settings, api_keys=("log-user-key",), log_format="json")
    app = create_app(keyed, configure_logs=True)
    # Nothing logged here may stay bound to this test's stdout.
    structlog.configure(cache_logger_on_first_use=False)
    async with AsyncTestClient(app=app) as client:
        with captured() as events:
            response = await client.get(
                "/llama3.2:1b", params={"message": SECRET}, headers={"X-API-Key": "log-user-key", "x-request-id": "r-1"}
            )

    assert response.status_code == 200
    assert requests_in(events) == []
    written = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (line,) = [entry for entry in written if entry["event"] == "request"]
    assert {key: line[key] for key in ("method", "route", "model", "status", "outcome", "tokens", "request_id")} == {
        "method": "GET",
        "route": "/{model_name}",
        "model": "llama3.2:1b",
        "status": 200,
        "outcome": "ok",
        "tokens": 3,
        "request_id": "r-1",
    }
    assert line["key"] == hashlib.sha256(b"log-user-key").hexdigest()[:12]
    assert line["level"] == "info"
    assert "kittens" not in json.dumps(written)
