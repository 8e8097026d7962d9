"""``GET /stream/{model}``: plain text, NDJSON and SSE relays, and failures before and after the first byte."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from litestar import Litestar
from litestar.exceptions import LitestarException
from litestar.testing import AsyncTestClient

from minato.errors import StreamAbortedError
from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import catalogue, chat_done, chat_token, ndjson, not_found, streamed
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
NDJSON = {"accept": "application/x-ndjson"}
SSE = {"accept": "text/event-stream"}
UPSTREAM_BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def answer(*tokens: str, eval_count: int = 2) -> list[bytes]:
    """Ollama's stream of ``tokens`` then the final line, one upstream chunk per line."""
    return [ndjson(chat_token(token)) for token in tokens] + [ndjson(chat_done(eval_count=eval_count))]


def causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and everything it was raised from, looking inside exception groups."""
    found: list[BaseException] = []
    while exc is not None:
        found.append(exc)
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                found.extend(causes(inner))
        exc = exc.__cause__ or exc.__context__
    return found


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    """Parse an SSE body into ``(event, data)`` pairs."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_plain_text_is_the_concatenated_tokens_with_anti_buffering_headers(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("The sky", " is", " blue.")))

    response = await client.get("/stream/llama3.2", params={"message": "hi"})

    assert response.status_code == 200
    assert response.text == "The sky is blue."
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-cache"
    assert json.loads(route.calls.last.request.content) == UPSTREAM_BODY


async def test_parameters_reach_ollama_on_the_streamed_route_too(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("ok")))

    response = await client.get(
        "/stream/llama3.2:1b",
        params={"message": "hi", "system_prompt": "Be brief.", "keep_alive": "-1", "temperature": "0.2"},
    )

    assert response.text == "ok"
    assert json.loads(route.calls.last.request.content) == {
        "model": "llama3.2:1b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "stream": True,
        "options": {"temperature": 0.2},
        "keep_alive": -1,
    }


async def test_ndjson_is_one_token_line_each_then_a_done_line_with_stats(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("Hel", "lo", eval_count=7)))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=NDJSON)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["x-accel-buffering"] == "no"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[:2] == [{"token": "Hel"}, {"token": "lo"}]
    assert len(lines) == 3
    done = lines[2]
    assert done["done"] is True
    assert done["model"] == "llama3.2"
    assert done["done_reason"] == "stop"
    assert done["stats"]["eval_count"] == 7
    assert done["stats"]["prompt_eval_count"] == 26
    assert done["stats"]["eval_duration"] == 115959084
    assert done["stats"]["tokens_per_second"] == pytest.approx(7 / 0.115959084, rel=1e-3)
    assert response.text.endswith("\n")
    assert json.loads(route.calls.last.request.content) == UPSTREAM_BODY


async def test_tokens_arriving_in_one_upstream_chunk_are_still_one_line_each(
    client: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, content=ndjson(chat_token("a"), chat_token("b"), chat_done()))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=NDJSON)

    assert [json.loads(line) for line in response.text.splitlines()][:2] == [{"token": "a"}, {"token": "b"}]


async def test_sse_is_token_events_then_a_done_event(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("Hel", "lo")))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=SSE)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = sse_events(response.text)
    assert events[:2] == [("token", {"token": "Hel"}), ("token", {"token": "lo"})]
    assert [name for name, _ in events] == ["token", "token", "done"]
    assert events[2][1]["done"] is True
    assert events[2][1]["done_reason"] == "stop"
    assert json.loads(route.calls.last.request.content) == UPSTREAM_BODY


async def test_sse_wins_when_both_structured_formats_are_accepted(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("x")))

    response = await client.get(
        "/stream/llama3.2", params={"message": "hi"}, headers={"accept": "application/x-ndjson, text/event-stream"}
    )

    assert sse_events(response.text)[0] == ("token", {"token": "x"})


async def test_every_sse_event_has_an_id_and_the_last_one_marks_the_end(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("Hel", "lo")))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=SSE)

    ids = [
        dict(line.split(": ", 1) for line in block.split("\n"))["id"] for block in response.text.split("\n\n") if block
    ]
    stream = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{stream}-1", f"{stream}-2", f"{stream}-end"]
    assert re.fullmatch(r"[0-9a-f]{16}", stream)


async def test_two_streams_never_share_event_ids(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("x")))

    first = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=SSE)
    second = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=SSE)

    assert first.text.split("\n", 1)[0] != second.text.split("\n", 1)[0]


@pytest.mark.parametrize("last", ["0123456789abcdef-end", "0123456789abcdef-7"], ids=["after-done", "cut-off"])
async def test_an_eventsource_reconnecting_to_a_minato_stream_gets_204_and_nothing_is_generated(
    client: Client, ollama: ServedOllama, last: str
) -> None:
    chat = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("again")))

    response = await client.get(
        "/stream/llama3.2", params={"message": "hi", "session": "s1"}, headers={**SSE, "Last-Event-ID": last}
    )

    assert response.status_code == 204
    assert response.content == b""
    assert not chat.called


async def test_a_foreign_last_event_id_does_not_stop_a_stream(client: Client, ollama: ServedOllama) -> None:
    chat = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("x")))

    response = await client.get(
        "/stream/llama3.2", params={"message": "hi"}, headers={**SSE, "Last-Event-ID": "not-ours"}
    )

    assert response.status_code == 200
    assert chat.called


async def test_a_reconnect_still_needs_a_key(ollama: ServedOllama, settings: Settings) -> None:
    app = create_app(
        msgspec.structs.replace(settings, api_keys=("k",)),
    )
    async with AsyncTestClient(app=app) as client:
        response = await client.get(
            "/stream/llama3.2", params={"message": "hi"}, headers={**SSE, "Last-Event-ID": "0123456789abcdef-end"}
        )

    assert response.status_code == 401


async def test_an_unknown_model_before_the_first_byte_is_a_404_not_a_200(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").respond(404, json=not_found("nope"))
    ollama.get("/api/tags", name="tags").respond(200, json=catalogue("nope:latest"))  # listed, then deleted

    response = await client.get("/stream/nope", params={"message": "hi"}, headers=NDJSON)

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "model 'nope' not found"}
    assert json.loads(route.calls.last.request.content)["model"] == "nope"


async def test_a_model_ollama_does_not_list_is_a_404_on_a_stream_without_asking_for_it(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer("x")))

    response = await client.get("/stream/ghost", params={"message": "hi"}, headers=SSE)

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"].startswith("model 'ghost' not found in Ollama")
    assert not route.called


async def test_a_busy_ollama_before_the_first_byte_is_a_503_with_retry_after(
    client: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(503, json={"error": "server busy, please try again."})

    response = await client.get("/stream/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "server busy, please try again."}
    assert route.called


async def test_an_error_line_before_any_token_is_a_502_not_a_200(client: Client, ollama: ServedOllama) -> None:
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(ndjson({"error": "out of memory"})))

    response = await client.get("/stream/llama3.2", params={"message": "hi"})

    assert response.status_code == 502
    assert response.json() == {"detail": "Ollama failed: out of memory"}
    assert route.called


async def test_ollama_down_is_a_503_before_the_stream_starts(client: Client, ollama: ServedOllama) -> None:
    ollama.down()

    response = await client.get("/stream/llama3.2", params={"message": "hi"})

    assert response.status_code == 503
    assert f"Ollama is unreachable at {ollama.url}" in response.json()["detail"]


async def test_a_mid_stream_error_ends_ndjson_with_an_error_line(client: Client, ollama: ServedOllama) -> None:
    pieces = [ndjson(chat_token("one")), ndjson({"error": "runner crashed"})]
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*pieces))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=NDJSON)

    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [
        {"token": "one"},
        {"error": "Ollama failed mid-stream: runner crashed", "done": True},
    ]
    assert route.called


async def test_a_mid_stream_error_ends_sse_with_an_error_event(client: Client, ollama: ServedOllama) -> None:
    pieces = [ndjson(chat_token("one")), ndjson(chat_token("two"), {"error": "runner crashed"})]
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*pieces))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=SSE)

    assert response.status_code == 200
    assert sse_events(response.text) == [
        ("token", {"token": "one"}),
        ("token", {"token": "two"}),
        ("error", {"error": "Ollama failed mid-stream: runner crashed", "done": True}),
    ]


async def test_a_stream_cut_before_done_ends_ndjson_with_an_error_line(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(ndjson(chat_token("one"))))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=NDJSON)

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0] == {"token": "one"}
    assert lines[-1]["done"] is True
    assert "before it was done" in lines[-1]["error"]


async def test_a_mid_stream_failure_aborts_the_plain_text_body(client: Client, ollama: ServedOllama) -> None:
    pieces = [ndjson(chat_token("partial answer")), ndjson({"error": "runner crashed"})]
    route = ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*pieces))
    received: list[bytes] = []

    async def read() -> None:
        async with client.stream("GET", "/stream/llama3.2", params={"message": "hi"}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                received.append(chunk)

    with pytest.raises(LitestarException) as caught:
        await read()

    aborted = [exc for exc in causes(caught.value) if isinstance(exc, StreamAbortedError)]
    assert [str(exc) for exc in aborted] == ["Ollama failed mid-stream: runner crashed"]
    assert b"".join(received) in (b"", b"partial answer")
    assert route.called


async def test_a_mid_stream_failure_never_presents_a_complete_plain_text_body(
    client: Client, ollama: ServedOllama
) -> None:
    pieces = [ndjson(chat_token("partial")), ndjson({"error": "runner crashed"})]
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*pieces))

    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure is right; a clean 200 body is not
        await client.get("/stream/llama3.2", params={"message": "hi"})


@pytest.mark.parametrize(
    ("headers", "decode"),
    [
        pytest.param({}, lambda text: text, id="text"),
        pytest.param(
            NDJSON,
            lambda text: "".join(json.loads(line).get("token", "") for line in text.splitlines()),
            id="ndjson",
        ),
        pytest.param(
            SSE,
            lambda text: "".join(str(data.get("token", "")) for _, data in sse_events(text)),
            id="sse",
        ),
    ],
)
async def test_unicode_and_newlines_survive_every_format(
    client: Client, ollama: ServedOllama, headers: dict[str, str], decode: object
) -> None:
    tokens = ["line one\n", "\n\nline three", " 日本語", " 🎉", ' "q" \\ ', "\r\nend", "data: x\n\n"]
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(*answer(*tokens)))

    response = await client.get("/stream/llama3.2", params={"message": "hi"}, headers=headers)

    assert response.status_code == 200
    assert decode(response.text) == "".join(tokens)  # type: ignore[operator]


async def test_a_multibyte_character_split_across_upstream_chunks_survives(
    client: Client, ollama: ServedOllama
) -> None:
    body = b"".join(answer("caf\u00e9 \U0001f389"))
    cut = body.index("\u00e9".encode()) + 1
    ollama.post("/api/chat").mock(side_effect=lambda _: streamed(body[:cut], body[cut:]))

    response = await client.get("/stream/llama3.2", params={"message": "hi"})

    assert response.text == "caf\u00e9 \U0001f389"
