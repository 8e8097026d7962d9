"""The front doors against a mocked Ollama: bytes relayed unchanged, keys kept from Ollama, and
every refusal, cut stream and hostile body answered in the door's own shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import zstandard
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import catalogue, chat_answer, chat_done, chat_token, ndjson, streamed
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]
USER = "door-user-key"
ADMIN = "door-admin-key"
AS_USER = {"Authorization": f"Bearer {USER}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


async def _client(settings: Settings, ollama: ServedOllama, **changes: Any) -> AsyncIterator[Client]:
    configured = msgspec.structs.replace(settings, api_keys=(USER,), admin_keys=(ADMIN,), **changes)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture(name="doors")
async def fx_doors(settings: Settings, ollama: ServedOllama) -> AsyncIterator[Client]:
    """Minato with a user key and an admin key."""
    async for client in _client(settings, ollama):
        yield client


def _sse(*events: tuple[str | None, object]) -> bytes:
    frames = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        frames.append((f"event: {name}\n" if name else "") + f"data: {payload}\n\n")
    return "".join(frames).encode()


def _event_stream(body: bytes, *pieces: bytes) -> httpx.Response:
    response = streamed(*(pieces or (body,)))
    response.headers["content-type"] = "text/event-stream"
    return response


def _openai_chunk(content: str | None, *, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_FRAME = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"completion_tokens": 7}}


def _tokens_metric(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("minato_tokens_generated_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- relaying ------------------------------------------------------------------------------------


async def test_a_native_chat_reaches_ollama_unchanged_and_without_the_clients_key(
    doors: Client, ollama: ServedOllama
) -> None:
    answer = json.dumps(chat_answer("Hello \u003cthere\u003e")).encode()
    route = ollama.post("/api/chat").respond(
        200, content=answer, headers={"content-type": "application/json; charset=utf-8"}
    )
    sent = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}],"extra":1}'

    response = await doors.post(
        "/api/chat", content=sent, headers={**AS_USER, "X-API-Key": USER, "Cookie": "session=secret"}
    )

    assert response.status_code == 200
    assert response.content == answer
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    upstream = route.calls.last.request
    assert upstream.content == sent
    assert "authorization" not in upstream.headers
    assert "x-api-key" not in upstream.headers
    assert "cookie" not in upstream.headers
    assert upstream.headers["host"] == ollama.host


async def test_a_native_stream_is_relayed_chunk_by_chunk_and_its_tokens_counted(
    doors: Client, ollama: ServedOllama
) -> None:
    pieces = [ndjson(chat_token("Hel")), ndjson(chat_token("lo")), ndjson(chat_done(eval_count=5))]
    ollama.post("/api/chat").mock(return_value=streamed(*pieces))

    response = await doors.post("/api/chat", json=CHAT, headers=AS_USER)
    metrics = await doors.get("/metrics", headers=AS_ADMIN)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.content == b"".join(pieces)
    assert _tokens_metric(metrics.text) == 5
    assert 'route="/api/chat"' in metrics.text


async def test_a_native_stream_that_ollama_cuts_off_ends_with_an_error_line(
    doors: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").mock(return_value=streamed(ndjson(chat_token("Hel"))))

    response = await doors.post("/api/chat", json=CHAT, headers=AS_USER)

    lines = response.content.splitlines()
    assert json.loads(lines[0])["message"]["content"] == "Hel"
    assert json.loads(lines[-1]) == {"error": "Ollama ended the stream before the answer was complete"}


async def test_an_ollama_error_line_in_a_native_stream_passes_through_alone(
    doors: Client, ollama: ServedOllama
) -> None:
    pieces = [ndjson(chat_token("Hel")), b'{"error":"model runner has unexpectedly stopped"}\n']
    ollama.post("/api/chat").mock(return_value=streamed(*pieces))

    response = await doors.post("/api/chat", json=CHAT, headers=AS_USER)

    assert response.content == b"".join(pieces)


async def test_ollamas_error_status_and_body_are_the_answer(doors: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(404, json={"error": "model 'nope' not found"})

    response = await doors.post("/api/chat", json={**CHAT, "model": "nope"}, headers=AS_USER)

    assert response.status_code == 404
    assert response.json() == {"error": "model 'nope' not found"}


async def test_an_openai_stream_without_done_gets_an_error_frame(doors: Client, ollama: ServedOllama) -> None:
    body = _sse((None, _openai_chunk("Hel")))
    ollama.post("/v1/chat/completions").mock(return_value=_event_stream(body))

    response = await doors.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AS_USER)

    frames = [frame for frame in response.text.split("\n\n") if frame]
    assert frames[0] == "data: " + json.dumps(_openai_chunk("Hel"), separators=(",", ":"))
    error = json.loads(frames[-1].removeprefix("data: "))
    assert error["error"]["type"] == "api_error"
    assert "before the answer was complete" in error["error"]["message"]


async def test_usage_minato_asked_for_is_counted_and_kept_from_the_client(doors: Client, ollama: ServedOllama) -> None:
    body = _sse((None, _openai_chunk("Hi")), (None, _openai_chunk(None, finish="stop")), (None, USAGE_FRAME))
    body += b"data: [DONE]\n\n"
    route = ollama.post("/v1/chat/completions").mock(return_value=_event_stream(body, body[:40], body[40:]))

    response = await doors.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AS_USER)
    metrics = await doors.get("/metrics", headers=AS_ADMIN)

    sent = json.loads(route.calls.last.request.content)
    assert sent["stream_options"] == {"include_usage": True}
    assert '"usage"' not in response.text
    assert response.text.endswith("data: [DONE]\n\n")
    assert response.text.count("data: ") == 3
    assert _tokens_metric(metrics.text) == 7


async def test_usage_the_client_asked_for_reaches_it_and_the_body_is_unchanged(
    doors: Client, ollama: ServedOllama
) -> None:
    body = _sse((None, _openai_chunk("Hi")), (None, USAGE_FRAME)) + b"data: [DONE]\n\n"
    route = ollama.post("/v1/chat/completions").mock(return_value=_event_stream(body))
    sent = json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}}).encode()

    response = await doors.post("/v1/chat/completions", content=sent, headers=AS_USER)

    assert route.calls.last.request.content == sent
    assert response.content == body


async def test_an_anthropic_stream_without_message_stop_gets_an_error_event(
    doors: Client, ollama: ServedOllama
) -> None:
    body = _sse(("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}))
    ollama.post("/v1/messages").mock(return_value=_event_stream(body))

    response = await doors.post("/v1/messages", json={**CHAT, "max_tokens": 10, "stream": True}, headers=AS_USER)

    last = response.text.strip().split("\n\n")[-1].splitlines()
    assert last[0] == "event: error"
    assert json.loads(last[1].removeprefix("data: "))["error"]["type"] == "api_error"


async def test_an_anthropic_answer_counts_its_output_tokens(doors: Client, ollama: ServedOllama) -> None:
    ollama.post("/v1/messages").respond(200, json={"type": "message", "usage": {"input_tokens": 3, "output_tokens": 9}})

    await doors.post("/v1/messages", json={**CHAT, "max_tokens": 10}, headers=AS_USER)
    metrics = await doors.get("/metrics", headers=AS_ADMIN)

    assert _tokens_metric(metrics.text) == 9


# -- refusals in each door's shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/api/chat", {"error": "the API key is not valid"}),
        (
            "/v1/chat/completions",
            {"error": {"message": "the API key is not valid", "type": "api_error", "param": None, "code": None}},
        ),
        (
            "/v1/messages",
            {"type": "error", "error": {"type": "authentication_error", "message": "the API key is not valid"}},
        ),
    ],
)
async def test_a_bad_key_is_refused_in_the_doors_shape(
    doors: Client, ollama: ServedOllama, path: str, shape: object
) -> None:
    route = ollama.post(path).respond(200, json={})

    response = await doors.post(path, json=CHAT, headers={"Authorization": "Bearer wrong"})

    assert response.status_code == 401
    assert response.json() == shape
    assert "WWW-Authenticate" in response.headers
    assert not route.called


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:" + "0" * 64),
    ],
)
async def test_model_management_needs_an_admin_key(doors: Client, ollama: ServedOllama, method: str, path: str) -> None:
    route = ollama.route(method=method, path=path).respond(200, json={"status": "success"})

    refused = await doors.request(method, path, json={"model": "llama3.2"}, headers=AS_USER)
    allowed = await doors.request(method, path, json={"model": "llama3.2"}, headers=AS_ADMIN)

    assert refused.status_code == 403
    assert refused.json() == {"error": "this route needs an admin key"}
    assert allowed.status_code == 200
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "gpt-oss:120b-cloud", "messages": []}),
        ("/api/generate", {"model": "qwen3-coder:480b-cloud", "prompt": "hi"}),
        ("/api/show", {"model": "deepseek:cloud"}),
        ("/v1/chat/completions", {"model": "gpt-oss:120b-cloud", "messages": []}),
        ("/v1/messages", {"model": "kimi:cloud", "max_tokens": 5, "messages": []}),
        ("/api/copy", {"source": "llama3.2", "destination": "mine-cloud"}),
    ],
)
async def test_cloud_models_are_refused_for_every_key(
    doors: Client, ollama: ServedOllama, path: str, body: dict[str, Any]
) -> None:
    route = ollama.post(path).respond(200, json={})

    response = await doors.post(path, json=body, headers=AS_ADMIN)

    assert response.status_code == 403
    assert "MINATO_ALLOW_CLOUD" in json.dumps(response.json())
    assert not route.called


async def test_anthropics_web_search_tool_spends_the_cloud_account_and_is_refused(
    doors: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/v1/messages").respond(200, json={})
    body = {**CHAT, "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}

    response = await doors.post("/v1/messages", json=body, headers=AS_ADMIN)

    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert not route.called


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/me"),
        ("POST", "/api/signout"),
        ("GET", "/api/status"),
        ("GET", "/api/experimental/model-recommendations"),
        ("POST", "/api/experimental/web_search"),
    ],
)
async def test_account_routes_are_refused_unless_cloud_is_allowed_and_then_admin_only(
    settings: Settings, ollama: ServedOllama, doors: Client, method: str, path: str
) -> None:
    route = ollama.route(method=method, path=path).respond(200, json={"name": "operator"})

    closed = await doors.request(method, path, headers=AS_ADMIN)
    async for allowed in _client(settings, ollama, allow_cloud=True):
        as_user = await allowed.request(method, path, headers=AS_USER)
        as_admin = await allowed.request(method, path, headers=AS_ADMIN)

    assert closed.status_code == 403
    assert as_user.status_code == 403
    assert as_admin.status_code == 200
    assert route.call_count == 1


@pytest.mark.parametrize("keep_alive", [0, -1, "-1m", "48h"])
async def test_a_user_key_cannot_unload_or_pin_a_model_through_the_native_door(
    doors: Client, ollama: ServedOllama, keep_alive: object
) -> None:
    route = ollama.post("/api/generate").respond(200, json={})

    refused = await doors.post("/api/generate", json={"model": "llama3.2", "keep_alive": keep_alive}, headers=AS_USER)
    allowed = await doors.post("/api/generate", json={"model": "llama3.2", "keep_alive": keep_alive}, headers=AS_ADMIN)

    assert refused.status_code == 403
    assert "MINATO_USER_MAX_KEEP_ALIVE" in refused.json()["error"] or "admin key" in refused.json()["error"]
    assert allowed.status_code == 200
    assert route.call_count == 1


async def test_a_user_keys_num_ctx_is_capped_on_the_native_door(settings: Settings, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    async for client in _client(settings, ollama, user_max_num_ctx=8192):
        big = await client.post("/api/chat", json={**CHAT, "options": {"num_ctx": 65536}}, headers=AS_USER)
        small = await client.post("/api/chat", json={**CHAT, "options": {"num_ctx": 4096}}, headers=AS_USER)

    assert big.status_code == 403
    assert "MINATO_USER_MAX_NUM_CTX" in big.json()["error"]
    assert small.status_code == 200
    assert route.call_count == 1


# -- hostile bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model":"llama3.2","MODEL":"gpt-oss:120b-cloud"}', id="case-variant"),
        pytest.param(b'{"model":"llama3.2","\xc5\xbftream":true}', id="unicode-fold"),
        pytest.param(b'{"model":"llama3.2"} {"model":"other"}', id="trailing-value"),
        pytest.param(b'{"model":"llama3.2\xff"}', id="invalid-utf8-in-a-field-minato-reads"),
        pytest.param(b'{"model":5}', id="wrong-type"),
    ],
)
async def test_a_body_minato_cannot_read_as_ollama_would_is_refused_not_forwarded(
    doors: Client, ollama: ServedOllama, body: bytes
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    completions = ollama.post("/v1/chat/completions").respond(200, json={})

    native = await doors.post("/api/chat", content=body, headers=AS_USER)
    openai = await doors.post("/v1/chat/completions", content=body, headers=AS_USER)

    assert native.status_code == 400
    assert isinstance(native.json()["error"], str)
    assert openai.status_code == 400
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert not chat.called
    assert not completions.called


async def test_a_nested_field_minato_reads_in_another_case_is_refused(doors: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/v1/chat/completions").respond(200, json={})
    body = b'{"model":"llama3.2","stream":true,"stream_options":{"Include_Usage":false}}'

    response = await doors.post("/v1/chat/completions", content=body, headers=AS_USER)

    assert response.status_code == 400
    assert "include_usage" in response.json()["error"]["message"]
    assert not route.called


async def test_invalid_utf8_where_minato_does_not_read_is_left_to_ollama(doors: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"\xff"}]}'

    response = await doors.post("/api/chat", content=body, headers=AS_USER)

    assert response.status_code == 200
    assert route.calls.last.request.content == body


async def test_an_empty_body_gets_ollamas_own_answer(doors: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(400, json={"error": "missing request body"})

    response = await doors.post("/api/chat", content=b"", headers=AS_USER)

    assert response.status_code == 400
    assert response.json() == {"error": "missing request body"}


async def test_a_zstd_body_is_decoded_before_it_is_read_and_forwarded(doors: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/v1/responses").respond(200, json={"usage": {"output_tokens": 2}})
    plain = json.dumps({"model": "llama3.2", "input": "hi"}).encode()

    response = await doors.post(
        "/v1/responses",
        content=zstandard.ZstdCompressor().compress(plain),
        headers={**AS_USER, "Content-Encoding": "zstd"},
    )

    assert response.status_code == 200
    assert route.calls.last.request.content == plain
    assert "content-encoding" not in route.calls.last.request.headers


async def test_a_zstd_bomb_is_refused_with_a_413(settings: Settings, ollama: ServedOllama) -> None:
    route = ollama.post("/v1/responses").respond(200, json={})
    bomb = zstandard.ZstdCompressor().compress(b'{"model":"llama3.2","input":"' + b"a" * 200_000 + b'"}')
    async for client in _client(settings, ollama, max_body_bytes=100_000):
        response = await client.post("/v1/responses", content=bomb, headers={**AS_USER, "Content-Encoding": "zstd"})

    assert len(bomb) < 1_000
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "api_error"
    assert not route.called


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_a_body_in_an_unknown_or_broken_encoding_is_a_400(
    doors: Client, ollama: ServedOllama, encoding: str
) -> None:
    route = ollama.post("/api/chat").respond(200, json={})

    response = await doors.post(
        "/api/chat", content=b"not compressed", headers={**AS_USER, "Content-Encoding": encoding}
    )

    assert response.status_code == 400
    assert not route.called


@pytest.mark.parametrize("path", ["/api/chat", "/api/embed", "/v1/chat/completions", "/v1/messages"])
async def test_a_door_generation_needs_a_slot_and_a_full_queue_is_a_503_in_the_doors_shape(
    settings: Settings, ollama: ServedOllama, path: str
) -> None:
    route = ollama.post(path).respond(200, json={})
    configured = msgspec.structs.replace(settings, api_keys=(USER,), max_generations=1, max_queue=0)
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        busy = app.state.runtime_slot.runtime.admission.try_acquire("llama3.2:latest")
        refused = await client.post(path, json={**CHAT, "input": "hi", "max_tokens": 5}, headers=AS_USER)
        busy.release()
        served = await client.post(path, json={**CHAT, "input": "hi", "max_tokens": 5}, headers=AS_USER)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert "too many generations waiting" in json.dumps(refused.json())
    assert served.status_code == 200
    assert route.call_count == 1


# -- the operator's headers ----------------------------------------------------------------------


async def test_the_operators_headers_reach_ollama_on_every_call(settings: Settings, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    async for client in _client(settings, ollama, ollama_headers={"Authorization": "Bearer upstream-token"}):
        await client.post("/api/chat", json=CHAT, headers=AS_USER)
        await client.get("/llama3.2", params={"message": "hi"}, headers=AS_USER)

    assert route.call_count == 2
    assert {call.request.headers["authorization"] for call in route.calls} == {"Bearer upstream-token"}


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/v1/models/..%2F..%2Fapi%2Fps", "/v1/models/..%2F..%2Fapi%2Fps"),
        ("/v1/models/a%3Fb", "/v1/models/a%3Fb"),
        ("/v1/models/llama3.2:1b", "/v1/models/llama3.2:1b"),
    ],
)
async def test_a_path_parameter_never_walks_the_forwarded_request_elsewhere(
    doors: Client, ollama: ServedOllama, sent: str, forwarded: str
) -> None:
    ps = ollama.get("/api/ps").respond(200, json={"models": []})
    model = ollama.route(method="GET", path__startswith="/v1/models/").respond(404, json={"error": {"message": "x"}})

    response = await doors.get(sent, headers=AS_USER)

    assert response.status_code == 404
    assert not ps.called
    assert model.calls.last.request.url.raw_path.decode() == forwarded


async def test_a_blob_digest_is_forwarded_encoded_even_when_it_is_not_printable(
    doors: Client, ollama: ServedOllama
) -> None:
    blob = ollama.route(method="POST", path__startswith="/api/blobs/").respond(400, json={"error": "invalid digest"})

    response = await doors.post("/api/blobs/a%00%23b", content=b"x", headers=AS_ADMIN)

    assert response.status_code == 400
    assert blob.calls.last.request.url.raw_path == b"/api/blobs/a%00%23b"


# -- named keys on the doors ---------------------------------------------------------------------

SCOPED = "door-scoped-key"
SCOPED_FILE = f"""
[keys.scoped]
key = "{SCOPED}"
models = ["llama3.2*"]
tokens_per_day = 5
"""
AS_SCOPED = {"Authorization": f"Bearer {SCOPED}"}


@pytest.fixture(name="scoped")
async def fx_scoped(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Client]:
    """Minato with one named key scoped to llama3.2 with a quota of 5 tokens a day."""
    keys = tmp_path / "keys.toml"
    keys.write_text(SCOPED_FILE)
    async for client in _client(settings, ollama, keys_file=str(keys)):
        yield client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "qwen3:8b", "messages": []}),
        ("/api/generate", {"model": "qwen3:8b", "prompt": "hi"}),
        ("/api/embed", {"model": "qwen3:8b", "input": "hi"}),
        ("/api/show", {"model": "qwen3:8b"}),
        ("/api/show", {"name": "qwen3:8b"}),
        ("/v1/chat/completions", {"model": "qwen3:8b", "messages": []}),
        ("/v1/embeddings", {"model": "qwen3:8b", "input": "hi"}),
        ("/v1/responses", {"model": "qwen3:8b", "input": "hi"}),
        ("/v1/messages", {"model": "qwen3:8b", "max_tokens": 5, "messages": []}),
    ],
)
async def test_a_model_outside_the_keys_scope_is_refused_on_every_door(
    scoped: Client, ollama: ServedOllama, path: str, body: dict[str, Any]
) -> None:
    route = ollama.post(path).respond(200, json={})

    response = await scoped.post(path, json=body, headers=AS_SCOPED)

    assert response.status_code == 403
    assert "may not use model 'qwen3:8b'" in json.dumps(response.json())
    assert not route.called


async def test_a_model_outside_the_scope_is_refused_by_the_model_route_too(
    scoped: Client, ollama: ServedOllama
) -> None:
    route = ollama.get("/v1/models/qwen3:8b").respond(200, json={"id": "qwen3:8b"})

    response = await scoped.get("/v1/models/qwen3:8b", headers=AS_SCOPED)

    assert response.status_code == 403
    assert response.json()["error"]["type"] == "api_error"
    assert not route.called


async def test_the_model_lists_of_every_door_show_only_the_keys_models(scoped: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/tags").respond(200, json=catalogue("llama3.2:latest", "qwen3:8b", "llama3.2:1b"))
    ollama.get("/api/ps").respond(200, json={"models": [{"name": "qwen3:8b", "model": "qwen3:8b"}]})
    ollama.get("/v1/models").respond(
        200, json={"object": "list", "data": [{"id": "qwen3:8b", "object": "model"}, {"id": "llama3.2:1b"}]}
    )

    tags = (await scoped.get("/api/tags", headers=AS_SCOPED)).json()
    ps = (await scoped.get("/api/ps", headers=AS_SCOPED)).json()
    models = (await scoped.get("/v1/models", headers=AS_SCOPED)).json()

    assert [entry["name"] for entry in tags["models"]] == ["llama3.2:latest", "llama3.2:1b"]
    assert ps == {"models": []}
    assert models == {"object": "list", "data": [{"id": "llama3.2:1b"}]}


async def test_tokens_generated_through_a_door_are_charged_to_the_keys_quota(
    scoped: Client, ollama: ServedOllama
) -> None:
    ollama.post("/v1/chat/completions").respond(200, json={"usage": {"completion_tokens": 6}})

    first = await scoped.post("/v1/chat/completions", json=CHAT, headers=AS_SCOPED)
    refused = await scoped.post("/v1/chat/completions", json=CHAT, headers=AS_SCOPED)
    metrics = await scoped.get("/metrics", headers=AS_ADMIN)

    assert first.status_code == 200
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "api_error"
    assert "retry-after" in refused.headers
    assert 'key="scoped"' in metrics.text
    assert SCOPED not in metrics.text


async def test_a_door_stream_longer_than_the_request_timeout_ends_with_an_error_line(
    settings: Settings, ollama: ServedOllama
) -> None:
    pieces = [ndjson(chat_token("Hel")), ndjson(chat_token("lo")), ndjson(chat_done())]
    ollama.post("/api/chat").mock(return_value=streamed(*pieces, pauses={1: 0.6}))
    async for client in _client(settings, ollama, request_timeout=0.3):
        response = await client.post("/api/chat", json=CHAT, headers=AS_USER)

    lines = [json.loads(line) for line in response.content.splitlines()]
    assert lines[0]["message"]["content"] == "Hel"
    assert "MINATO_REQUEST_TIMEOUT" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)
