"""The Ollama stand-in speaks Ollama's wire format faithfully enough for the official client.

Each test runs against the real stand-in subprocess (``python -m tests.support.standin``), through the
official ``ollama`` client where it applies and through raw ``httpx`` where bytes matter.
Expected strings come from ``/work/shared/reference/ollama-api.md``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import anyio
import httpx
import ollama
import openai
import pytest
import zstandard
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.support.standin.process import run_standin

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ANSWER = "The sky is blue because of Rayleigh scattering."
PNG_1PX = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def standin_url() -> Iterator[str]:
    with run_standin("--pull-step-ms", "1") as url:
        yield url


@pytest.fixture
async def client(standin_url: str) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=standin_url) as c:
        yield c


@pytest.fixture
async def http(standin_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=standin_url, timeout=10) as c:
        yield c


async def _collect(stream: AsyncIterator[object], into: list[object]) -> None:
    async for part in stream:
        into.append(part)


async def _events(http: httpx.AsyncClient) -> list[dict[str, object]]:
    r = await http.get("/_standin/events")
    events: list[dict[str, object]] = r.json()
    return events


# --------------------------------------------------------------------------- plain routes


async def test_root_answers_ollama_is_running_as_plain_text(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    head = await http.head("/")
    assert head.status_code == 200
    assert head.content == b""


async def test_version_is_compact_json_without_trailing_newline(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/version")
    assert r.content == b'{"version":"0.33.0-rc2"}'
    assert r.headers["content-type"] == "application/json; charset=utf-8"


async def test_unknown_route_is_a_plain_text_404(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/does-not-exist")
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"] == "text/plain"


async def test_wrong_method_on_a_known_route_is_a_plain_text_405(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/show")
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    r = await http.post("/api/tags")
    assert r.status_code == 405


async def test_foreign_host_header_gets_a_bare_403(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/version", headers={"Host": "evil.example.com"})
    assert r.status_code == 403
    assert r.content == b""
    for allowed in ("localhost:11434", "10.1.2.3", "ollama.internal", "box.local", "[::1]:80"):
        ok = await http.get("/api/version", headers={"Host": allowed})
        assert ok.status_code == 200, allowed


async def test_introspection_is_exempt_from_the_host_guard(http: httpx.AsyncClient) -> None:
    r = await http.get("/_standin/active", headers={"Host": "evil.example.com"})
    assert r.status_code == 200
    assert r.json() == {"streams": 0}


async def test_requests_are_recorded_with_host_headers_and_parsed_bodies(
    http: httpx.AsyncClient,
) -> None:
    await http.delete("/_standin/requests")
    await http.post("/api/show", json={"model": "llama3.2", "marker": 42})
    records = (await http.get("/_standin/requests")).json()
    assert len(records) == 1
    rec = records[0]
    assert (rec["method"], rec["path"]) == ("POST", "/api/show")
    assert rec["host"] == rec["headers"]["host"]
    assert rec["headers"]["content-type"] == "application/json"
    assert rec["body"] == {"model": "llama3.2", "marker": 42}


# --------------------------------------------------------------------------- catalogue


async def test_list_parses_and_holds_the_catalogue_newest_first(
    client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    listed = await client.list()
    names = [m.model for m in listed.models]
    for expected in ("llama3.2:latest", "qwen3:0.6b", "all-minilm:latest", "standin/hang:latest"):
        assert expected in names
    assert not any((n or "").startswith(("standin/tokens", "standin/paced")) for n in names)
    stamps = [m.modified_at for m in listed.models if m.modified_at is not None]
    assert len(stamps) == len(names)
    assert stamps == sorted(stamps, reverse=True)
    raw = (await http.get("/api/tags")).json()["models"][0]
    assert raw["name"] == raw["model"]
    assert len(raw["digest"]) == 64
    assert "expires_at" not in raw
    assert raw["capabilities"]


async def test_show_has_model_info_and_escapes_angle_brackets_like_go(
    client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    shown = await client.show("llama3.2")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 131072
    assert shown.capabilities == ["completion", "tools"]
    raw = await http.post("/api/show", json={"model": "llama3.2"})
    assert b"\\u003c|eot_id|\\u003e" in raw.content
    assert b"<|eot_id|>" not in raw.content
    dynamic = await client.show("standin/tokens:5")
    assert dynamic.capabilities == ["completion"]


async def test_show_of_a_missing_model_is_404_with_the_normalised_name(
    client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client.show("llama9")
    assert (err.value.status_code, err.value.error) == (404, "model 'llama9:latest' not found")
    r = await http.post("/api/show", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


async def test_delete_of_a_missing_model_is_404_echoing_the_name(
    client: ollama.AsyncClient,
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("ghost")
    assert (err.value.status_code, err.value.error) == (404, "model 'ghost' not found")


async def test_pull_of_an_unknown_model_fails_inside_a_200_stream(
    client: ollama.AsyncClient,
) -> None:
    seen: list[object] = []
    stream = await client.pull("no-such-model", stream=True)
    with pytest.raises(ollama.ResponseError) as err:
        await _collect(stream, seen)
    assert [p.status for p in seen if isinstance(p, ollama.ProgressResponse)] == ["pulling manifest"]
    assert err.value.status_code == -1
    assert err.value.error == "pull model manifest: file does not exist"


async def test_non_streaming_pull_of_an_unknown_model_is_a_500(
    client: ollama.AsyncClient,
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client.pull("no-such-model")
    assert (err.value.status_code, err.value.error) == (
        500,
        "pull model manifest: file does not exist",
    )


async def test_pull_streams_layer_progress_installs_and_delete_removes(
    client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    parts = [p async for p in await client.pull("smollm:135m", stream=True)]
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [p for p in parts if (p.status or "").startswith("pulling ") and p.digest]
    assert layer[0].completed is None  # omitted while 0
    assert layer[0].status == "pulling " + (layer[0].digest or "")[7:19]
    assert any(p.completed == p.total for p in layer)
    assert "smollm:135m" in [m.model for m in (await client.list()).models]
    assert (await client.delete("smollm:135m")).status == "success"
    again = await http.request("DELETE", "/api/delete", json={"model": "smollm:135m"})
    assert again.status_code == 404


# --------------------------------------------------------------------------- inference


async def test_non_streaming_chat_parses_into_a_chat_response(client: ollama.AsyncClient) -> None:
    resp = await client.chat("llama3.2", messages=[{"role": "user", "content": "Why blue?"}])
    assert resp.model == "llama3.2"
    assert resp.message.role == "assistant"
    assert resp.message.content == ANSWER
    assert (resp.done, resp.done_reason, resp.eval_count) == (True, "stop", 8)
    assert resp.total_duration
    assert resp.load_duration
    assert resp.eval_duration
    assert (resp.created_at or "").endswith("Z")


async def test_streaming_chat_yields_tokens_then_a_final_chunk(client: ollama.AsyncClient) -> None:
    parts = [
        p async for p in await client.chat("llama3.2", messages=[{"role": "user", "content": "Why?"}], stream=True)
    ]
    assert "".join(p.message.content or "" for p in parts) == ANSWER
    assert [p.done for p in parts] == [False] * 8 + [True]
    final = parts[-1]
    assert final.message.content == ""
    assert final.done_reason == "stop"
    assert final.prompt_eval_count
    assert final.prompt_eval_duration


async def test_generate_stream_and_non_stream_carry_context(client: ollama.AsyncClient) -> None:
    whole = await client.generate("llama3.2:1b", prompt="Why is the sky blue?")
    assert whole.response == ANSWER
    assert whole.context
    parts = [p async for p in await client.generate("llama3.2:1b", prompt="Why?", stream=True)]
    assert "".join(p.response or "" for p in parts) == ANSWER
    assert parts[-1].done
    assert parts[-1].context
    assert parts[-1].eval_count == 8


async def test_num_predict_limits_tokens_and_reports_length(client: ollama.AsyncClient) -> None:
    resp = await client.generate("llama3.2", prompt="x", options={"num_predict": 3})
    assert resp.done_reason == "length"
    assert resp.eval_count == 3
    assert resp.response == "The sky is"


async def test_a_num_predict_above_the_answer_lets_the_model_stop_by_itself(client: ollama.AsyncClient) -> None:
    resp = await client.generate("llama3.2", prompt="x", options={"num_predict": 100})
    assert resp.done_reason == "stop"
    assert resp.response == ANSWER


async def test_thinking_model_thinks_first_by_default(client: ollama.AsyncClient) -> None:
    parts = [
        p async for p in await client.chat("qwen3:0.6b", messages=[{"role": "user", "content": "hi"}], stream=True)
    ]
    kinds = ["think" if p.message.thinking else "text" for p in parts if not p.done]
    assert kinds[0] == "think"
    assert kinds.index("text") > 0
    assert "think" not in kinds[kinds.index("text") :]
    plain = await client.chat("qwen3:0.6b", messages=[{"role": "user", "content": "hi"}], think=False)
    assert plain.message.thinking is None
    assert plain.message.content == ANSWER


async def test_think_on_a_non_thinking_model_is_rejected(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat("llama3.2", messages=[{"role": "user", "content": "hi"}], think=True)
    assert (err.value.status_code, err.value.error) == (400, '"llama3.2" does not support thinking')


async def test_nomic_embed_text_is_an_embedding_model_as_ollama_describes_it() -> None:
    """The embedding model most set-ups pull: listed with Ollama's capabilities (``/api/tags`` carries
    them since Ollama 0.30), 768 dimensions, and no chat."""
    with run_standin("--models", "nomic-embed-text:latest") as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            (listed,) = (await http.get("/api/tags")).json()["models"]
            shown = (await http.post("/api/show", json={"model": "nomic-embed-text"})).json()
            embedded = (await http.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})).json()
            chat = await http.post(
                "/api/chat", json={"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]}
            )

    assert listed["name"] == "nomic-embed-text:latest"
    assert listed["capabilities"] == ["embedding"]
    assert listed["details"]["family"] == "nomic-bert"
    assert listed["details"]["parameter_size"] == "137M"
    assert listed["size"] == 274302450
    assert shown["capabilities"] == ["embedding"]
    assert len(embedded["embeddings"][0]) == 768
    assert chat.json() == {"error": '"nomic-embed-text" does not support chat'}


async def test_embedding_only_model_refuses_chat_and_generate(http: httpx.AsyncClient) -> None:
    chat = await http.post("/api/chat", json={"model": "all-minilm", "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 400
    assert chat.content == b'{"error":"\\"all-minilm\\" does not support chat"}'
    gen = await http.post("/api/generate", json={"model": "all-minilm", "prompt": "x"})
    assert gen.json() == {"error": '"all-minilm" does not support generate'}


async def test_missing_and_empty_model_names_follow_ollama(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/chat", json={"model": "nope", "messages": []})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = await http.post("/api/generate", json={"model": ""})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})
    r = await http.post("/api/chat", json={"model": ""})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


async def test_load_and_unload_requests_answer_with_a_single_object(
    client: ollama.AsyncClient, http: httpx.AsyncClient
) -> None:
    loaded = await client.generate("llama3.2:1b", keep_alive=-1)
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    ps = await client.ps()
    entry = next(m for m in ps.models if m.model == "llama3.2:1b")
    assert entry.expires_at is not None
    assert entry.expires_at.year > 2300
    assert entry.size_vram
    assert entry.context_length
    r = await http.post("/api/chat", json={"model": "llama3.2:1b", "messages": [], "keep_alive": 0})
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert body["done_reason"] == "unload"
    assert body["message"] == {"role": "assistant", "content": ""}
    assert "llama3.2:1b" not in [m.model for m in (await client.ps()).models]
    again = await client.chat("llama3.2:1b", messages=[], keep_alive=0)
    assert again.done_reason == "unload"


async def test_unit_less_keep_alive_string_is_a_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", json={"model": "llama3.2", "keep_alive": "300"})
    assert r.status_code == 400
    assert r.content == b'{"error":"time: missing unit in duration \\"300\\""}'
    r = await http.post("/api/generate", json={"model": "llama3.2", "keep_alive": True})
    assert r.json() == {"error": "Unsupported type: 'bool'"}


async def test_known_option_with_the_wrong_type_is_a_500_unknown_is_ignored(
    client: ollama.AsyncClient,
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate("llama3.2", prompt="hi", options={"num_ctx": "4096"})
    assert (err.value.status_code, err.value.error) == (
        500,
        'option "num_ctx" must be of type integer',
    )
    ok = await client.generate("llama3.2", prompt="hi", options={"numa": True, "bogus": 1})
    assert ok.done


async def test_data_url_image_is_illegal_base64_at_byte_4(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/chat",
        json={
            "model": "llava:7b",
            "messages": [{"role": "user", "content": "?", "images": ["data:image/png;base64," + PNG_1PX]}],
        },
    )
    assert (r.status_code, r.json()) == (400, {"error": "illegal base64 data at input byte 4"})
    ok = await http.post(
        "/api/generate",
        json={"model": "llava:7b", "prompt": "?", "images": [PNG_1PX], "stream": False},
    )
    assert ok.status_code == 200


async def test_a_body_over_a_mebibyte_is_read_whole_as_ollama_does(http: httpx.AsyncClient) -> None:
    """Ollama sets no limit on a request body: several megabytes of images are an ordinary question."""
    image = base64.b64encode(base64.b64decode(PNG_1PX) + b"\x00" * (3 * 1024 * 1024)).decode()
    r = await http.post("/api/generate", json={"model": "llava:7b", "prompt": "?", "images": [image], "stream": False})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True


NO_MULTIMODAL = (
    '{"error":{"code":400,"message":"Multimodal data provided, but model does not support multimodal '
    'requests.","type":"invalid_request_error"}}'
)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/api/chat",
            {"messages": [{"role": "user", "content": "?", "images": [PNG_1PX]}]},
            id="chat-last-message",
        ),
        pytest.param(
            "/api/chat",
            {
                "messages": [
                    {"role": "user", "content": "look", "images": [PNG_1PX]},
                    {"role": "assistant", "content": "A cat."},
                    {"role": "user", "content": "and now?"},
                ]
            },
            id="chat-image-in-history",
        ),
        pytest.param("/api/chat", {"messages": [{"role": "user", "content": "?", "Images": [None]}]}, id="chat-null"),
        pytest.param("/api/generate", {"prompt": "?", "images": [PNG_1PX]}, id="generate"),
    ],
)
async def test_images_to_a_text_only_model_are_the_runners_400_before_any_byte(
    http: httpx.AsyncClient, path: str, body: dict[str, object], stream: bool
) -> None:
    await http.post("/_standin/reset")

    r = await http.post(path, json={"model": "llama3.2", "stream": stream, **body})

    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"error": NO_MULTIMODAL}
    # The runner was loaded before the completion failed, as Ollama schedules it first.
    loaded = (await http.get("/api/ps")).json()["models"]
    assert [m["name"] for m in loaded] == ["llama3.2:latest"]


async def test_images_are_fine_for_vision_models_and_no_images_for_text_models(http: httpx.AsyncClient) -> None:
    vision = await http.post(
        "/api/chat",
        json={
            "model": "llava:7b",
            "stream": False,
            "messages": [{"role": "user", "content": "?", "images": [PNG_1PX]}],
        },
    )
    text = await http.post(
        "/api/chat",
        json={"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "?", "images": []}]},
    )
    load = await http.post("/api/generate", json={"model": "llama3.2", "images": [PNG_1PX]})

    assert vision.status_code == 200
    assert text.status_code == 200
    assert (load.status_code, load.json()["done_reason"]) == (200, "load")  # no prompt: a load, nothing checked


@pytest.mark.parametrize(
    ("keep_alive", "status"),
    [
        pytest.param("2562047h47m16.854775807s", 200, id="int64-max"),
        pytest.param("2562047h47m16.854775808s", 400, id="one-over"),
        pytest.param("99999999999999999h", 400, id="far-over"),
        pytest.param("-2562047h47m16.854775808s", 200, id="int64-min-is-forever"),
    ],
)
async def test_an_overlong_keep_alive_is_gos_invalid_duration(
    http: httpx.AsyncClient, keep_alive: str, status: int
) -> None:
    r = await http.post("/api/generate", json={"model": "llama3.2", "keep_alive": keep_alive})

    assert r.status_code == status
    if status == 400:
        assert r.json() == {"error": f'time: invalid duration "{keep_alive}"'}


async def test_empty_and_malformed_bodies_get_go_decoder_errors(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/chat", content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    r = await http.post("/api/chat", content=b'{"model": x}')
    assert r.json() == {"error": "invalid character 'x' looking for beginning of value"}
    r = await http.post("/api/chat", content=b'{"model": "llama3.2"')
    assert r.json() == {"error": "unexpected EOF"}
    r = await http.post("/api/chat", json={"model": "llama3.2", "stream": "yes"})
    assert r.json() == {"error": "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool"}


async def test_busy_model_is_a_503_before_any_output(client: ollama.AsyncClient) -> None:
    stream = await client.generate("standin/busy", prompt="hi", stream=True)
    with pytest.raises(ollama.ResponseError) as err:
        await _collect(stream, [])
    assert err.value.status_code == 503
    assert err.value.error == "server busy, please try again.  maximum pending requests exceeded"


async def test_fail_before_model_is_a_500_runner_error(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat("standin/fail-before", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 500
    assert err.value.error.startswith("model runner has unexpectedly stopped")


async def test_fail_midstream_model_errors_after_three_tokens_under_200(
    client: ollama.AsyncClient,
) -> None:
    got: list[object] = []
    stream = await client.chat("standin/fail-midstream", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(ollama.ResponseError) as err:
        await _collect(stream, got)
    assert [p.message.content for p in got if isinstance(p, ollama.ChatResponse)] == ["The", " sky", " is"]
    assert err.value.status_code == -1
    assert "unexpected EOF" in err.value.error


async def test_paced_model_delivers_lines_as_they_are_produced(http: httpx.AsyncClient) -> None:
    arrivals: list[float] = []
    async with http.stream("POST", "/api/generate", json={"model": "standin/paced:10x50", "prompt": "hi"}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        async for line in r.aiter_lines():
            assert line, "blank line in NDJSON stream"
            json.loads(line)
            arrivals.append(time.monotonic())
    assert len(arrivals) == 11
    assert arrivals[0] < arrivals[-1] - 0.3


async def test_hang_model_records_a_cancelled_stream_when_the_client_leaves(
    http: httpx.AsyncClient, standin_url: str
) -> None:
    await http.delete("/_standin/events")
    async with httpx.AsyncClient(base_url=standin_url, timeout=httpx.Timeout(10, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/api/chat", json={"model": "standin/hang", "messages": []})
    deadline = time.monotonic() + 5
    kinds: list[object] = []
    while time.monotonic() < deadline:
        kinds = [e["type"] for e in await _events(http) if e["model"] == "standin/hang"]
        if "stream_cancelled" in kinds:
            break
        await anyio.sleep(0.05)
    assert kinds == ["stream_started", "stream_cancelled"]
    assert (await http.get("/_standin/active")).json() == {"streams": 0}


async def test_client_disconnect_mid_stream_stops_generation(http: httpx.AsyncClient, standin_url: str) -> None:
    await http.delete("/_standin/events")
    async with (
        httpx.AsyncClient(base_url=standin_url, timeout=10) as c,
        c.stream("POST", "/api/generate", json={"model": "standin/paced:100x20", "prompt": "x"}) as r,
    ):
        async for _line in r.aiter_lines():
            break  # walk away after the first token
    deadline = time.monotonic() + 5
    cancelled: list[dict[str, object]] = []
    while time.monotonic() < deadline and not cancelled:
        cancelled = [e for e in await _events(http) if e["type"] == "stream_cancelled"]
        await anyio.sleep(0.05)
    assert cancelled
    sent = cancelled[0]["tokens_sent"]
    assert isinstance(sent, int)
    assert 1 <= sent < 100


async def test_created_at_is_a_utc_rfc3339_nano_timestamp(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", json={"model": "standin/tokens:2", "prompt": "x", "stream": False})
    stamp = r.json()["created_at"]
    match = re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", stamp)
    assert match is not None
    assert not (match.group(1) or "").endswith("0")  # Go trims trailing zeros
    assert not r.content.endswith(b"\n")


# --------------------------------------------------------------------------- OpenAI /v1 front door

WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CLAUDE_HI: list[MessageParam] = [{"role": "user", "content": "hi"}]
WEATHER_QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def oai(standin_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=standin_url + "/v1", api_key="sk-client-key", max_retries=0) as c:
        yield c


@pytest.fixture
async def claude(standin_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=standin_url, api_key="sk-ant-client-key", max_retries=0) as c:
        yield c


def _sse_data(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, asserting Ollama's framing (one line, blank line after)."""
    assert body.endswith("\n\n")
    frames = body[:-2].split("\n\n")
    assert all(f.startswith("data: ") and "\n" not in f for f in frames), frames
    return [f[len("data: ") :] for f in frames]


def _anthropic_events(body: str) -> list[tuple[str, dict[str, object]]]:
    assert body.endswith("\n\n")
    out: list[tuple[str, dict[str, object]]] = []
    for frame in body[:-2].split("\n\n"):
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == event_line[len("event: ") :]
        out.append((event_line[len("event: ") :], data))
    return out


async def test_openai_chat_whole_is_a_chat_completion(oai: openai.AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(model="llama3.2", messages=HI)
    assert re.fullmatch(r"chatcmpl-\d{1,3}", done.id)
    assert (done.object, done.model, done.system_fingerprint) == ("chat.completion", "llama3.2", "fp_ollama")
    choice = done.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", ANSWER, "stop")
    assert choice.message.tool_calls is None
    assert done.usage is not None
    assert done.usage.completion_tokens == 8
    assert done.usage.total_tokens == done.usage.prompt_tokens + 8


async def test_openai_chat_whole_is_json_encoder_output(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
    assert r.headers["content-type"] == "application/json"
    assert r.content.endswith(b"}\n")
    assert list(r.json()) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]


async def test_openai_max_tokens_cuts_the_answer_with_length(oai: openai.AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(model="llama3.2", messages=HI, max_tokens=3)
    assert (done.choices[0].message.content, done.choices[0].finish_reason) == ("The sky is", "length")


async def test_openai_chat_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="llama3.2",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-2])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1


async def test_openai_chat_stream_framing_is_sse_ending_in_done(http: httpx.AsyncClient) -> None:
    body = {"model": "standin/tokens:2", "messages": HI, "stream": True}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    frames = _sse_data(r.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "The"},
        {"content": " sky"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all("usage" not in c for c in chunks)


async def test_openai_tool_call_whole(oai: openai.AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(
        model="llama3.2",
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert re.fullmatch(r"call_[a-z0-9]{8}", call.id)
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


async def test_openai_tool_call_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="llama3.2",
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = [c async for c in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.index, tc.type) for tc in calls] == [(0, "function")]
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments or "")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_openai_tool_result_turn_gets_a_text_answer(oai: openai.AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(
        model="llama3.2",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_abc"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].message.content


async def test_openai_unknown_model_is_the_sdks_not_found_error(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await oai.chat.completions.create(model="no-such-model", messages=HI)
    assert err.value.status_code == 404
    r = await http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": HI, "stream": True})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.content == (
        b'{"error":{"message":"model \'no-such-model\' not found","type":"not_found_error","param":null,"code":null}}\n'
    )


async def test_openai_middleware_rejections_are_gin_json(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "llama3.2", "messages": []})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.content == (
        b'{"error":{"message":"[] is too short - \'messages\'",'
        b'"type":"invalid_request_error","param":null,"code":null}}'
    )
    r = await http.post("/v1/chat/completions", content=b"")
    assert (r.status_code, r.json()["error"]["message"]) == (400, "EOF")


async def test_openai_runner_failure_before_output_is_an_api_error(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        await oai.chat.completions.create(model="standin/fail-before", messages=HI)
    body = err.value.body
    assert isinstance(body, dict)
    assert body["type"] == "api_error"
    assert str(body["message"]).startswith("model runner has unexpectedly stopped")


async def test_openai_stream_failing_midway_just_ends_without_done(http: httpx.AsyncClient) -> None:
    body = {"model": "standin/fail-midstream", "messages": HI, "stream": True}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    frames = [json.loads(f) for f in _sse_data(r.text)]
    assert "[DONE]" not in r.text
    assert [f["choices"][0]["delta"].get("content") for f in frames] == ["The", " sky", " is", ""]
    # The native error line decodes as an empty answer: no model, no finish reason.
    assert frames[-1]["model"] == ""
    assert frames[-1]["choices"][0]["finish_reason"] is None


async def test_openai_completions_whole_and_streamed(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    done = await oai.completions.create(model="standin/tokens:2", prompt="x")
    assert re.fullmatch(r"cmpl-\d{1,3}", done.id)
    assert (done.object, done.choices[0].text, done.choices[0].finish_reason) == ("text_completion", "The sky", "stop")
    assert done.usage is not None
    assert done.usage.completion_tokens == 2
    stream = await oai.completions.create(model="standin/tokens:2", prompt="x", stream=True)
    parts = [c async for c in stream]
    assert [c.choices[0].text for c in parts] == ["The", " sky", ""]
    assert parts[-1].choices[0].finish_reason == "stop"
    body = {"model": "standin/tokens:1", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    r = await http.post("/v1/completions", json=body)
    frames = _sse_data(r.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[0]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 1
    r = await http.post("/v1/completions", json={"model": "standin/tokens:1", "prompt": ["x"]})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_openai_embeddings_float_and_base64_agree(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    # The SDK asks for base64 and decodes it itself.
    got = await oai.embeddings.create(model="all-minilm", input=["a", "b"])
    assert [e.index for e in got.data] == [0, 1]
    assert all(len(e.embedding) == 384 for e in got.data)
    assert got.model == "all-minilm"
    assert got.usage.prompt_tokens == got.usage.total_tokens > 0
    r = await http.post("/v1/embeddings", json={"model": "all-minilm", "input": "a", "encoding_format": "float"})
    floats = r.json()["data"][0]["embedding"]
    assert floats == pytest.approx(got.data[0].embedding, abs=1e-6)
    r = await http.post("/v1/embeddings", json={"model": "all-minilm", "input": []})
    assert (r.status_code, r.json()["error"]["message"]) == (400, "invalid input")
    r = await http.post("/v1/embeddings", json={"model": "all-minilm", "input": "a", "encoding_format": "hex"})
    assert r.status_code == 400
    assert "Supported values: ['float', 'base64']" in r.json()["error"]["message"]


async def test_openai_models_list_and_retrieve(oai: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in oai.models.list()]
    assert "llama3.2:latest" in ids
    model = await oai.models.retrieve("llama3.2")
    assert (model.id, model.owned_by) == ("llama3.2", "library")
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no-such-model")


async def test_v1_requests_are_recorded_byte_for_byte(http: httpx.AsyncClient) -> None:
    await http.delete("/_standin/requests")
    raw = b'{"model":"standin/tokens:1","messages":[{"role":"user","content":"hi"}],"extra":1}'
    await http.post("/v1/chat/completions", content=raw, headers={"Authorization": "Bearer sk-client-key"})
    (rec,) = (await http.get("/_standin/requests")).json()
    assert (rec["method"], rec["path"]) == ("POST", "/v1/chat/completions")
    assert base64.b64decode(rec["raw_body"]) == raw
    assert rec["headers"]["authorization"] == "Bearer sk-client-key"


# --------------------------------------------------------------------------- Anthropic /v1/messages


async def test_anthropic_message_whole(claude: anthropic.AsyncAnthropic) -> None:
    msg = await claude.messages.create(model="llama3.2", max_tokens=100, messages=CLAUDE_HI)
    assert re.fullmatch(r"msg_[0-9a-f]{24}", msg.id)
    assert (msg.type, msg.role, msg.model, msg.stop_reason) == ("message", "assistant", "llama3.2", "end_turn")
    assert [(b.type, getattr(b, "text", None)) for b in msg.content] == [("text", ANSWER)]
    assert msg.usage.output_tokens == 8
    assert msg.usage.input_tokens > 0
    short = await claude.messages.create(model="llama3.2", max_tokens=3, messages=CLAUDE_HI)
    assert short.stop_reason == "max_tokens"


async def test_anthropic_message_stream(claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient) -> None:
    async with claude.messages.stream(model="llama3.2", max_tokens=100, messages=CLAUDE_HI) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == ANSWER
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8
    body = {"model": "standin/tokens:2", "max_tokens": 100, "messages": HI, "stream": True}
    r = await http.post("/v1/messages", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    events = _anthropic_events(r.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert events[5][1]["delta"] == {"stop_reason": "end_turn"}


async def test_anthropic_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    tool: ToolParam = {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    msg = await claude.messages.create(
        model="llama3.2",
        max_tokens=100,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],
    )
    assert msg.stop_reason == "tool_use"
    (block,) = [b for b in msg.content if b.type == "tool_use"]
    assert block.name == "get_weather"
    assert isinstance(block.input, dict)
    assert re.fullmatch(r"call_[a-z0-9]{8}", block.id)


async def test_anthropic_errors_are_the_sdks_and_anthropics_shape(
    claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await claude.messages.create(model="no-such-model", max_tokens=10, messages=CLAUDE_HI)
    r = await http.post("/v1/messages", json={"model": "no-such-model", "max_tokens": 10, "messages": HI})
    assert (r.status_code, r.headers["content-type"]) == (404, "application/json")
    assert r.content.endswith(b"}\n")
    body = r.json()
    assert re.fullmatch(r"req_[0-9a-f]{24}", body.pop("request_id"))
    assert body == {"type": "error", "error": {"type": "not_found_error", "message": "model 'no-such-model' not found"}}
    r = await http.post("/v1/messages", json={"model": "llama3.2", "messages": HI})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be positive",
    }
    r = await http.post("/v1/messages", json={"model": "standin/busy", "max_tokens": 10, "messages": HI})
    assert (r.status_code, r.json()["error"]["type"]) == (503, "overloaded_error")


async def test_anthropic_stream_failing_midway_ends_without_message_stop(http: httpx.AsyncClient) -> None:
    body = {"model": "standin/fail-midstream", "max_tokens": 100, "messages": HI, "stream": True}
    r = await http.post("/v1/messages", json=body)
    assert r.status_code == 200
    names = [name for name, _ in _anthropic_events(r.text)]
    assert names == ["message_start", "content_block_start"] + ["content_block_delta"] * 3


# --------------------------------------------------------------------------- model management


async def test_copy_makes_a_new_name_and_a_missing_source_is_404(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/copy", json={"source": "llama3.2", "destination": "copied:v1"})
    assert (r.status_code, r.content) == (200, b"")
    names = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
    assert "copied:v1" in names
    r = await http.post("/api/copy", json={"source": "no-such-model", "destination": "x"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "no-such-model" not found'})
    r = await http.post("/api/copy", json={"source": "bad name!", "destination": "x"})
    assert (r.status_code, r.json()) == (400, {"error": 'source "bad name!" is invalid'})
    await http.request("DELETE", "/api/delete", json={"model": "copied:v1"})


async def test_create_from_an_installed_model_streams_status_lines(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/create", json={"model": "created:v1", "from": "llama3.2"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert all(line["status"].startswith("using existing layer sha256:") for line in lines[:-2])
    assert lines[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    shown = await http.post("/api/show", json={"model": "created:v1"})
    assert shown.status_code == 200
    r = await http.post("/api/create", json={"model": "created:v2"})
    assert (r.status_code, r.json()) == (400, {"error": "neither 'from' or 'files' was specified"})
    r = await http.post("/api/create", json={"model": "created:v2", "from": "no-such-model", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": "pull model manifest: file does not exist"})
    await http.request("DELETE", "/api/delete", json={"model": "created:v1"})


async def test_push_without_registry_credentials_is_refused(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/push", json={"model": "llama3.2"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0] == {"status": "retrieving manifest"}
    assert "error" in lines[-1]
    r = await http.post("/api/push", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


async def test_blobs_check_and_upload_by_sha256(http: httpx.AsyncClient) -> None:
    data = b"standin blob " + str(time.time_ns()).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await http.head(f"/api/blobs/{digest}")).status_code == 404
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    r = await http.post(f"/api/blobs/{wrong}", content=data)
    assert r.status_code == 400
    assert r.json() == {"error": f'digest mismatch, expected "{wrong}", got "{digest}"'}
    assert (await http.post(f"/api/blobs/{digest}", content=data)).status_code == 201
    assert (await http.head(f"/api/blobs/{digest}")).status_code == 200
    assert (await http.post(f"/api/blobs/{digest}", content=data)).status_code == 200
    r = await http.post("/api/blobs/sha256:abc", content=data)
    assert (r.status_code, r.json()) == (400, {"error": "invalid digest format"})


async def test_openai_thinking_arrives_as_reasoning(http: httpx.AsyncClient) -> None:
    body = {"model": "qwen3:0.6b", "messages": HI}
    message = (await http.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]
    assert message["reasoning"] == "Okay, the user asks about the sky."
    assert message["content"] == ANSWER
    r = await http.post("/v1/chat/completions", json={**body, "stream": True})
    deltas = [json.loads(f)["choices"][0]["delta"] for f in _sse_data(r.text)[:-1]]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": "Okay,"}
    assert "".join(d.get("reasoning", "") for d in deltas) == "Okay, the user asks about the sky."
    assert "".join(d.get("content", "") for d in deltas) == ANSWER
    r = await http.post("/v1/chat/completions", json={**body, "reasoning_effort": "none"})
    assert "reasoning" not in r.json()["choices"][0]["message"]


# --------------------------------------------------------------------------- OpenAI Responses

RESPONSE_FIELDS: list[str] = [
    "id", "object", "created_at", "completed_at", "status", "incomplete_details", "model",
    "previous_response_id", "instructions", "output", "error", "tools", "tool_choice", "truncation",
    "parallel_tool_calls", "text", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs",
    "temperature", "reasoning", "usage", "max_output_tokens", "max_tool_calls", "store", "background",
    "service_tier", "metadata", "safety_identifier", "prompt_cache_key",
]  # fmt: skip
RESPONSES_WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _response_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """``event:``/``data:`` frames; each payload's keys sorted (Go marshals a map) and typed as its event."""
    assert body.endswith("\n\n")
    out: list[tuple[str, dict[str, Any]]] = []
    for frame in body[:-2].split("\n\n"):
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        kind = event_line[len("event: ") :]
        data = json.loads(data_line[len("data: ") :])
        assert list(data) == sorted(data)
        assert data["type"] == kind
        out.append((kind, data))
    assert [d["sequence_number"] for _, d in out] == list(range(len(out)))
    return out


async def test_openai_responses_whole_is_a_response(oai: openai.AsyncOpenAI) -> None:
    done = await oai.responses.create(
        model="llama3.2", input="hi", instructions="Be brief.", max_output_tokens=3, temperature=0.5
    )
    assert re.fullmatch(r"resp_\d{1,6}", done.id)
    assert (done.object, done.status, done.model) == ("response", "completed", "llama3.2")
    assert done.output_text == "The sky is"
    (item,) = done.output
    assert item.type == "message"
    assert re.fullmatch(r"msg_\d{1,6}", item.id)
    assert (item.role, item.status) == ("assistant", "completed")
    assert done.usage is not None
    assert done.usage.output_tokens == 3
    assert done.usage.total_tokens == done.usage.input_tokens + 3
    assert (done.instructions, done.max_output_tokens, done.temperature, done.top_p) == ("Be brief.", 3, 0.5, 1)
    assert done.completed_at is not None
    assert done.completed_at >= done.created_at


async def test_openai_responses_whole_is_the_structs_json_encoder_output(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/responses", json={"model": "standin/tokens:2", "input": [{"role": "user", "content": "x"}]}
    )
    assert r.headers["content-type"] == "application/json"
    assert r.content.endswith(b"}\n")
    assert list(r.json()) == RESPONSE_FIELDS
    # Go writes float64 1.0 as 1, and the request's absent fields as their defaults.
    assert b'"top_p":1,' in r.content
    assert b'"temperature":1,' in r.content
    done = r.json()
    assert (done["instructions"], done["reasoning"], done["tools"], done["metadata"]) == (None, None, [], {})
    assert done["output"][0]["content"] == [
        {"type": "output_text", "text": "The sky", "annotations": [], "logprobs": []}
    ]


async def test_openai_responses_stream_through_the_sdk(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="llama3.2", input="hi", stream=True)
    events = [e async for e in stream]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.output_text == ANSWER
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 8
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if e.type in ("response.created", "response.completed")}) == 1


async def test_openai_responses_stream_event_sequence(http: httpx.AsyncClient) -> None:
    body = {"model": "standin/tokens:2", "input": "x", "stream": True}
    r = await http.post("/v1/responses", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    assert (r.headers["cache-control"], r.headers["connection"]) == ("no-cache", "keep-alive")
    events = _response_events(r.text)
    assert [kind for kind, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    assert list(created) == sorted(RESPONSE_FIELDS)
    added = events[2][1]["item"]
    assert (added["status"], added["content"]) == ("in_progress", [])
    assert [d["delta"] for kind, d in events if kind.endswith(".delta")] == ["The", " sky"]
    assert events[6][1]["text"] == "The sky"
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"] == [events[8][1]["item"]]
    assert completed["output"][0]["id"] == added["id"]
    assert completed["usage"]["output_tokens"] == 2
    assert completed["usage"]["total_tokens"] == completed["usage"]["input_tokens"] + 2


async def test_openai_responses_tool_call_whole_and_streamed(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    question = "What is the weather in Paris?"
    done = await oai.responses.create(model="llama3.2", input=question, tools=[RESPONSES_WEATHER_TOOL])
    (call,) = done.output
    assert call.type == "function_call"
    assert call.id == f"fc_{done.id}_0"
    assert re.fullmatch(r"call_[a-z0-9]{8}", call.call_id)
    assert (call.name, call.status) == ("get_weather", "completed")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert done.tools[0].type == "function"
    body = {"model": "llama3.2", "input": question, "tools": [RESPONSES_WEATHER_TOOL], "stream": True}
    events = _response_events((await http.post("/v1/responses", json=body)).text)
    assert [kind for kind, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2][1]["item"]["arguments"] == ""
    assert json.loads(events[4][1]["arguments"]) == {"city": "Paris"}
    assert events[-1][1]["response"]["output"] == [events[5][1]["item"]]


async def test_openai_responses_function_call_output_turn_gets_a_text_answer(oai: openai.AsyncOpenAI) -> None:
    done = await oai.responses.create(
        model="llama3.2",
        tools=[RESPONSES_WEATHER_TOOL],
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": "call_abc", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_abc", "output": "sunny"},
        ],
    )
    assert [item.type for item in done.output] == ["message"]
    assert done.output_text == ANSWER


async def test_openai_responses_reasoning_whole_streamed_and_off(http: httpx.AsyncClient) -> None:
    body: dict[str, Any] = {"model": "qwen3:0.6b", "input": "hi"}
    done = (await http.post("/v1/responses", json=body)).json()
    reasoning, message = done["output"]
    assert reasoning == {
        "id": f"rs_{done['id']}",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Okay, the user asks about the sky."}],
        "encrypted_content": "Okay, the user asks about the sky.",
    }
    assert message["content"][0]["text"] == ANSWER
    events = _response_events((await http.post("/v1/responses", json={**body, "stream": True})).text)
    kinds = [kind for kind, _ in events]
    assert kinds[2:4] == ["response.output_item.added", "response.reasoning_summary_text.delta"]
    done_at = kinds.index("response.reasoning_summary_text.done")
    assert kinds[done_at + 1 : done_at + 3] == ["response.output_item.done", "response.output_item.added"]
    assert events[done_at][1]["text"] == "Okay, the user asks about the sky."
    assert events[done_at + 2][1]["output_index"] == 1
    assert [item["type"] for item in events[-1][1]["response"]["output"]] == ["reasoning", "message"]
    off = (await http.post("/v1/responses", json={**body, "reasoning": {"effort": "none"}})).json()
    assert [item["type"] for item in off["output"]] == ["message"]
    assert off["reasoning"] == {"effort": "none"}


async def test_openai_responses_unknown_model_is_the_sdks_not_found_error(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await oai.responses.create(model="no-such-model", input="hi")
    assert err.value.status_code == 404
    r = await http.post("/v1/responses", json={"model": "no-such-model", "input": "hi", "stream": True})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == (
        b'{"error":{"message":"model \'no-such-model\' not found","type":"not_found_error","param":null,"code":null}}\n'
    )


async def test_openai_responses_middleware_rejections(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    huge: Any = {"effort": "huge"}
    with pytest.raises(openai.BadRequestError, match="invalid reasoning value"):
        await oai.responses.create(model="llama3.2", input="hi", reasoning=huge)
    cases = [
        ({"model": "llama3.2", "input": 5}, "input must be a string or array: "),
        ({"model": "llama3.2", "input": [{"type": "nope"}]}, 'input[0]: unknown input item type: "nope"'),
        ({"model": "llama3.2", "input": [{"content": "x"}]}, "input[0]: input item missing required 'type' field"),
        ({"model": "llama3.2", "input": "x", "max_output_tokens": "3"}, "json: cannot unmarshal string into Go"),
    ]
    for body, message in cases:
        r = await http.post("/v1/responses", json=body)
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert r.json()["error"]["message"].startswith(message), r.text
        assert r.json()["error"]["type"] == "invalid_request_error"


async def test_openai_responses_runner_failure_and_images(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        await oai.responses.create(model="standin/fail-before", input="hi")
    assert isinstance(err.value.body, dict)
    assert err.value.body["type"] == "api_error"
    image = {"type": "input_image", "detail": "auto", "image_url": f"data:image/png;base64,{PNG_1PX}"}
    body: dict[str, Any] = {"model": "llama3.2", "input": [{"role": "user", "content": [image]}]}
    r = await http.post("/v1/responses", json=body)
    assert r.status_code == 400
    assert "Multimodal data provided, but model does not support multimodal requests." in r.json()["error"]["message"]
    image["image_url"] = "https://example.invalid/cat.png"
    r = await http.post("/v1/responses", json=body)
    assert (
        r.json()["error"]["message"] == "image URLs are not currently supported, please use base64 encoded data instead"
    )
    image["image_url"] = "data:image/png;base64,not base64"
    assert (await http.post("/v1/responses", json=body)).json()["error"]["message"] == "invalid image input"


async def test_openai_responses_accepts_a_zstd_body_and_refuses_a_broken_one(http: httpx.AsyncClient) -> None:
    body = zstandard.ZstdCompressor().compress(json.dumps({"model": "standin/tokens:2", "input": "x"}).encode())
    headers = {"Content-Encoding": "zstd", "Content-Type": "application/json"}
    r = await http.post("/v1/responses", content=body, headers=headers)
    assert r.status_code == 200
    assert r.json()["output"][0]["content"][0]["text"] == "The sky"
    r = await http.post("/v1/responses", content=b'{"model":"llama3.2"}', headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "invalid input: magic number mismatch"
    # Only the Responses door decodes zstd, as in Ollama.
    r = await http.post("/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 400


async def test_openai_responses_stream_failing_midway_just_ends(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    body = {"model": "standin/fail-midstream", "input": "hi", "stream": True}
    r = await http.post("/v1/responses", json=body)
    assert r.status_code == 200
    events = _response_events(r.text)
    assert [kind for kind, _ in events][-4:] == ["response.content_part.added"] + ["response.output_text.delta"] * 3
    # The native error line decodes as an empty, unfinished answer: the converter has nothing to say.
    stream = await oai.responses.create(model="standin/fail-midstream", input="hi", stream=True)
    seen = [e.type async for e in stream]
    assert seen[-1] == "response.output_text.delta"
    assert "response.completed" not in seen
