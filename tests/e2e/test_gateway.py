"""Minato as a real server in front of Ollama: answers, streams, images, models and failures."""

from __future__ import annotations

import base64
import json
import time

import httpx
import msgspec
import pytest

from tests.support.payloads import PNG_1PX
from tests.support.servers import Backend, MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e


def _chat_requests(standin: httpx.Client) -> list[dict[str, object]]:
    return [r for r in standin.get("/_standin/requests").json() if r["path"] == "/api/chat"]


def _wait_for_event(standin: httpx.Client, kind: str, timeout: float = 5.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in standin.get("/_standin/events").json():
            if event["type"] == kind:
                return dict(event)
        time.sleep(0.02)
    raise AssertionError(f"the stand-in recorded no {kind} event within {timeout} s")


# -- answers ----------------------------------------------------------------------------------


def test_a_question_gets_a_whole_answer_with_stats(http: httpx.Client, backend: Backend) -> None:
    response = http.get(f"/{backend.model}", params={"message": "Say hello in three words."})

    assert response.status_code == 200
    body = response.json()
    assert body["response"].strip()
    assert body["model"] == backend.model
    assert body["done_reason"] in {"stop", "length"}
    assert body["stats"]["eval_count"] > 0


def test_only_what_the_caller_set_reaches_ollama_with_ollamas_own_host_header(
    http: httpx.Client, standin: httpx.Client, backend: Backend
) -> None:
    response = http.get(
        f"/{backend.model}",
        params={"message": "hi", "temperature": "0.2", "keep_alive": "10m"},
        headers={"Host": "gateway.example.com"},
    )

    assert response.status_code == 200
    (sent,) = _chat_requests(standin)
    assert sent["body"] == {
        "model": backend.model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,  # whole answers are streamed too, so the first-token timeout applies
        "options": {"temperature": 0.2},
        "keep_alive": "10m",
    }
    assert sent["host"] == backend.ollama_url.removeprefix("http://")


def test_model_names_with_namespaces_and_tags_route_to_ollama(http: httpx.Client, standin: httpx.Client) -> None:
    model = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"

    response = http.get(f"/{model}", params={"message": "hi"})

    assert response.status_code == 200
    assert _chat_requests(standin)[0]["body"]["model"] == model  # type: ignore[index]


# -- streaming --------------------------------------------------------------------------------


def test_tokens_arrive_as_ollama_yields_them(minato: MinatoServer, standin: httpx.Client) -> None:
    arrivals: list[float] = []
    text = b""
    started = time.monotonic()
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{minato.url}/stream/standin/paced:10x100", params={"message": "count"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.headers["transfer-encoding"] == "chunked"
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
            text += chunk

    assert len(arrivals) >= 8, "tokens paced 100 ms apart must arrive as separate chunks"
    assert arrivals[-1] - arrivals[0] > 0.6, "the first token must arrive long before the stream ends"
    assert len(text.decode().split()) == 10


def test_a_live_stream_delivers_the_answer_in_several_chunks(minato: MinatoServer, backend: Backend) -> None:
    if backend.kind == "standin":
        pytest.skip("the stand-in's pacing is checked by test_tokens_arrive_as_ollama_yields_them")
    chunks = []
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "GET", f"{minato.url}/stream/{backend.model}", params={"message": "Count from one to twenty in words."}
        ) as response,
    ):
        assert response.status_code == 200
        chunks = list(response.iter_raw())

    assert len(chunks) > 1
    assert b"".join(chunks).decode().strip()


def test_ndjson_stream_ends_with_stats(http: httpx.Client, backend: Backend) -> None:
    response = http.get(
        f"/stream/{backend.model}", params={"message": "hi"}, headers={"Accept": "application/x-ndjson"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert all("token" in line for line in lines[:-1])
    assert lines[-1]["done"] is True
    assert lines[-1]["stats"]["eval_count"] > 0


def test_sse_stream_emits_token_events_then_done(http: httpx.Client, backend: Backend) -> None:
    response = http.get(f"/stream/{backend.model}", params={"message": "hi"}, headers={"Accept": "text/event-stream"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [dict(line.split(": ", 1) for line in block.split("\n")) for block in response.text.strip().split("\n\n")]
    assert {event["event"] for event in events[:-1]} == {"token"}
    assert events[-1]["event"] == "done"
    assert events[-1]["id"].endswith("-end")
    assert json.loads(events[-1]["data"])["done_reason"] in {"stop", "length"}


def test_a_client_that_disconnects_mid_stream_stops_ollama(minato: MinatoServer, standin: httpx.Client) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{minato.url}/stream/standin/slow", params={"message": "tell me a story"}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())
        disconnected = time.monotonic()

    cancelled = _wait_for_event(standin, "stream_cancelled")
    assert float(cancelled["t"]) > 0  # type: ignore[arg-type]
    assert time.monotonic() - disconnected < 5
    assert standin.get("/_standin/active").json()["streams"] == 0
    assert not [e for e in standin.get("/_standin/events").json() if e["type"] == "stream_completed"]


def test_a_client_that_gives_up_before_the_first_token_stops_ollama(
    minato: MinatoServer, standin: httpx.Client
) -> None:
    with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{minato.url}/stream/standin/hang", params={"message": "hi"})

    _wait_for_event(standin, "stream_cancelled")
    assert standin.get("/_standin/active").json()["streams"] == 0


def test_a_client_that_gives_up_on_a_whole_answer_stops_ollama(minato: MinatoServer, standin: httpx.Client) -> None:
    with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{minato.url}/standin/hang", params={"message": "hi"})

    _wait_for_event(standin, "stream_cancelled")


def test_a_failure_after_the_first_token_aborts_a_plain_text_stream(
    minato: MinatoServer, standin: httpx.Client
) -> None:
    received = bytearray()

    def read_everything() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", f"{minato.url}/stream/standin/fail-midstream", params={"message": "hi"}) as r,
        ):
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        read_everything()

    assert received, "the tokens before the failure were relayed"
    # A later request's log line marks a point after the failed stream's last words: uvicorn logs an
    # application's traceback before it closes the connection, i.e. before the client saw it cut.
    marker = httpx.get(f"{minato.url}/health", headers={"x-request-id": "after-the-failed-stream"}, timeout=10)
    assert marker.status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("after-the-failed-stream" in line for line in minato.log_lines()):
        time.sleep(0.02)
    log = minato.log_lines()
    assert any('"outcome":"aborted"' in line for line in log), "the stream is logged as aborted"
    assert any('"stream_failed"' in line for line in log), "the failure is logged once, as an event"
    assert not any("Exception in ASGI application" in line for line in log), "and not as a server traceback"


def test_a_failure_after_the_first_token_ends_an_ndjson_stream_with_an_error(
    http: httpx.Client, standin: httpx.Client
) -> None:
    response = http.get(
        "/stream/standin/fail-midstream", params={"message": "hi"}, headers={"Accept": "application/x-ndjson"}
    )

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200
    assert [line["token"] for line in lines[:-1]]
    assert lines[-1]["done"] is True
    assert "unexpected EOF" in lines[-1]["error"]


# -- failures before the first byte get honest statuses ---------------------------------------


def test_an_unknown_model_is_a_404(http: httpx.Client, backend: Backend) -> None:
    response = http.get("/no-such-model-anywhere:7b", params={"message": "hi"})

    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


def test_an_unknown_model_is_a_404_on_a_stream_too(http: httpx.Client, backend: Backend) -> None:
    response = http.get("/stream/no-such-model-anywhere:7b", params={"message": "hi"})

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("model", "status", "detail"),
    [
        pytest.param("standin/busy", 503, "server busy", id="ollama-queue-full"),
        pytest.param("standin/fail-before", 502, "model runner has unexpectedly stopped", id="runner-crash"),
        pytest.param("all-minilm", 400, "does not support chat", id="embedding-only-model"),
    ],
)
def test_ollama_failures_before_the_first_token_get_honest_statuses_on_streams(
    http: httpx.Client, standin: httpx.Client, model: str, status: int, detail: str
) -> None:
    response = http.get(f"/stream/{model}", params={"message": "hi"})

    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert _chat_requests(standin)[0]["body"]["stream"] is True  # type: ignore[index]
    if status == 503:
        assert response.headers["retry-after"].isdigit()


def test_a_model_that_does_not_answer_in_time_is_a_504(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_minato(
        backend.ollama_url, tmp_path_factory.mktemp("impatient") / "minato.log", first_token_timeout="0.3"
    )
    try:
        whole = httpx.get(f"{server.url}/stream/standin/hang", params={"message": "hi"}, timeout=10)
    finally:
        stop_minato(server)

    assert whole.status_code == 504
    assert "0.3" in whole.json()["detail"]
    _wait_for_event(standin, "stream_cancelled")


def test_ollama_down_is_a_503_naming_its_url_and_ready_says_so(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.support.servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    server = start_minato(dead, tmp_path_factory.mktemp("down") / "minato.log")
    try:
        answer = httpx.get(f"{server.url}/llama3.2", params={"message": "hi"}, timeout=10)
        stream = httpx.get(f"{server.url}/stream/llama3.2", params={"message": "hi"}, timeout=10)
        ready = httpx.get(f"{server.url}/ready", timeout=10)
        health = httpx.get(f"{server.url}/health", timeout=10)
        ready_head = httpx.head(f"{server.url}/ready", timeout=10)
        health_head = httpx.head(f"{server.url}/health", timeout=10)
    finally:
        stop_minato(server)

    assert (answer.status_code, stream.status_code, ready.status_code, health.status_code) == (503, 503, 503, 200)
    refused = f"Ollama is unreachable at {dead}: the connection was refused"
    assert answer.json() == {"detail": refused}
    assert stream.json() == {"detail": refused}
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["reason"] == refused
    assert (ready_head.status_code, ready_head.content) == (503, b"")
    assert ready_head.headers["content-length"] == str(len(ready.content))
    assert (health_head.status_code, health_head.content) == (200, b"")


def test_ready_reports_ollamas_version(http: httpx.Client, backend: Backend) -> None:
    response = http.get("/ready")
    head = http.head("/ready")

    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["ollama_version"]
    assert (head.status_code, head.content, head.headers["content-type"]) == (200, b"", "application/json")


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        pytest.param({"message": ""}, ["query", "message"], id="empty-message"),
        pytest.param({}, ["query", "message"], id="missing-message"),
        pytest.param({"message": "hi", "keep_alive": "300x"}, ["query", "keep_alive"], id="bad-keep-alive"),
        pytest.param({"message": "hi", "temperature": "hot"}, ["query", "temperature"], id="bad-temperature"),
        pytest.param({"message": "hi", "num_ctx": "0"}, ["query", "num_ctx"], id="zero-context"),
        pytest.param({"message": "hi", "temprature": "1"}, ["query", "temprature"], id="typo-in-parameter"),
        pytest.param(
            {"message": "hi", "keep_alive": "99999999999999999h"}, ["query", "keep_alive"], id="keep-alive-overflow"
        ),
        pytest.param({"message": ["a", "b"]}, ["query", "message"], id="message-twice"),
        pytest.param({"message": "hi", "temperature": ["0.1", "0.9"]}, ["query", "temperature"], id="option-twice"),
    ],
)
def test_bad_input_is_a_422_naming_the_parameter_and_never_reaches_ollama(
    http: httpx.Client, standin: httpx.Client, backend: Backend, query: dict[str, str | list[str]], loc: list[str]
) -> None:
    response = http.get(f"/stream/{backend.model}", params=query)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert "Expected `" not in response.text
    assert _chat_requests(standin) == []


# -- images -----------------------------------------------------------------------------------


def test_images_reach_ollama_as_base64(http: httpx.Client, standin: httpx.Client, backend: Backend) -> None:
    response = http.post(
        f"/vision/{backend.vision_model}",
        params={"message": "What is in this picture?"},
        files=[("images", ("pixel.png", PNG_1PX, "image/png"))],
    )

    assert response.status_code == 200
    assert response.json()["response"]
    (sent,) = _chat_requests(standin)
    assert sent["body"]["messages"] == [  # type: ignore[index]
        {"role": "user", "content": "What is in this picture?", "images": [base64.b64encode(PNG_1PX).decode()]}
    ]


def test_a_live_vision_model_describes_an_image(http: httpx.Client, backend: Backend) -> None:
    if backend.vision_model is None:
        pytest.skip("set MINATO_LIVE_VISION_MODEL to a vision model installed on that Ollama")

    response = http.post(
        f"/stream/vision/{backend.vision_model}",
        data={"message": "What colour is this pixel?"},
        files=[("images", ("pixel.png", PNG_1PX, "image/png"))],
    )

    assert response.status_code == 200
    assert response.text.strip()


def test_a_text_only_model_refuses_images_before_generating(
    http: httpx.Client, standin: httpx.Client, backend: Backend
) -> None:
    response = http.post(
        f"/vision/{backend.model}", params={"message": "hi"}, files=[("images", ("p.png", PNG_1PX, "image/png"))]
    )

    assert response.status_code == 400
    assert "cannot read images" in response.json()["detail"]
    assert _chat_requests(standin) == []


def test_a_file_that_is_not_an_image_is_a_422(http: httpx.Client, standin: httpx.Client, backend: Backend) -> None:
    response = http.post(
        f"/vision/{backend.vision_model}",
        params={"message": "hi"},
        files=[("images", ("notes.png", b"just some text", "image/png"))],
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "images", 0]
    assert _chat_requests(standin) == []


# -- models -----------------------------------------------------------------------------------


def test_installing_an_unknown_model_is_a_404_with_ollamas_reason(http: httpx.Client, backend: Backend) -> None:
    response = http.post("/install/no-such-model-anywhere-xyz:7b")

    assert response.status_code == 404
    assert "file does not exist" in response.json()["detail"]


def test_installing_streams_progress_then_the_model_is_listed(http: httpx.Client, standin: httpx.Client) -> None:
    with http.stream("POST", "/install/smollm:135m", params={"stream": "true"}) as response:
        assert response.status_code == 200
        lines = [msgspec.json.decode(line) for line in response.iter_lines() if line]

    assert lines[-1] == {"status": "success"}
    with_percent = [line for line in lines if "percent" in line]
    assert with_percent
    assert all(0 <= line["percent"] <= 100 for line in with_percent)
    names = [model["name"] for model in http.get("/models_list/").json()["models_list"]]
    assert "smollm:135m" in names


def test_the_model_list_describes_each_model(http: httpx.Client, backend: Backend) -> None:
    response = http.get("/models_list/")

    assert response.status_code == 200
    models = {model["name"]: model for model in response.json()["models_list"]}
    expected = backend.model if ":" in backend.model else f"{backend.model}:latest"
    model = models[expected]
    assert model["size"] > 0
    assert model["size_mb"] == round(model["size"] / 1024 / 1024, 2)
    assert model["family"]
    assert model["quantization_level"]
    assert len(model["digest"]) == 64


# -- operations -------------------------------------------------------------------------------


def test_every_request_is_logged_once_without_the_prompt(minato: MinatoServer, http: httpx.Client) -> None:
    prompt = "the-prompt-must-never-be-logged-7f3a"

    response = http.get("/llama3.2:1b", params={"message": prompt}, headers={"X-Request-ID": "e2e-trace-1"})

    assert response.headers["x-request-id"] == "e2e-trace-1"
    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        lines = [json.loads(line) for line in minato.log_lines() if '"e2e-trace-1"' in line]
    assert [line["event"] for line in lines] == ["request"]
    assert lines[0]["model"] == "llama3.2:1b"
    assert lines[0]["status"] == response.status_code
    assert all(prompt not in line for line in minato.log_lines())


def test_openapi_documents_every_route(http: httpx.Client) -> None:
    paths = http.get("/docs/openapi.json").json()["paths"]

    assert {"/{model_name}", "/stream/{model_name}", "/vision/{model_name}", "/stream/vision/{model_name}"} <= set(
        paths
    )
    assert {"/install/{model_name}", "/models_list", "/health", "/ready"} <= set(paths)
