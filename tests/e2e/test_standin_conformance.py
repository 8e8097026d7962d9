"""The Ollama stand-in speaks Ollama's wire format faithfully enough for the official client.

Each test runs against the real stand-in subprocess (``python -m tests.standin``), through the
official ``ollama`` client where it applies and through raw ``httpx`` where bytes matter.
Expected strings come from ``/work/shared/reference/ollama-api.md``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import ollama
import pytest

from tests.standin.process import run_standin

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
    resp = await client.generate("llama3.2", prompt="x", options={"num_predict": 11})
    assert resp.done_reason == "length"
    assert resp.eval_count == 11
    assert resp.response == ANSWER + " The sky is"


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
