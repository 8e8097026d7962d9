"""The OpenAI and Anthropic doors through Minato as a real server, driven by the official SDKs."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import zstandard

from tests.support.servers import MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e

USER = "e2e-door-user"
ADMIN = "e2e-door-admin"
HI: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def keyed(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with a user key and an admin key in front of the stand-in."""
    server = start_minato(standin_url, tmp_path_factory.mktemp("doors") / "doors.log", api_keys=USER, admin_keys=ADMIN)
    yield server
    stop_minato(server)


@pytest.fixture
def oai(keyed: MinatoServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key=USER, max_retries=0, timeout=20) as client:
        yield client


@pytest.fixture
def claude(keyed: MinatoServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=keyed.url, api_key=USER, max_retries=0, timeout=20) as client:
        yield client


def _received(standin: httpx.Client, path: str) -> list[dict[str, Any]]:
    return [r for r in standin.get("/_standin/requests").json() if r["path"] == path]


def _assert_no_client_key(record: dict[str, Any]) -> None:
    headers = {name.lower() for name in record["headers"]}
    assert not headers & {"authorization", "x-api-key", "cookie"}


# -- OpenAI --------------------------------------------------------------------------------------


def test_openai_chat_whole_reaches_ollama_unchanged_and_without_the_key(
    oai: openai.OpenAI, standin: httpx.Client
) -> None:
    done = oai.chat.completions.create(model="llama3.2", messages=HI)

    assert done.object == "chat.completion"
    assert done.choices[0].message.content
    assert done.usage is not None
    assert done.usage.completion_tokens > 0
    (record,) = _received(standin, "/v1/chat/completions")
    assert json.loads(base64.b64decode(record["raw_body"])) == {"messages": HI, "model": "llama3.2"}
    _assert_no_client_key(record)


def test_openai_stream_with_usage_asked_gets_it_and_the_body_is_unchanged(
    oai: openai.OpenAI, standin: httpx.Client
) -> None:
    stream = oai.chat.completions.create(
        model="standin/tokens:3", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    (record,) = _received(standin, "/v1/chat/completions")
    assert json.loads(base64.b64decode(record["raw_body"]))["stream_options"] == {"include_usage": True}


def test_openai_stream_without_usage_sees_exactly_what_it_asked_for(oai: openai.OpenAI, keyed: MinatoServer) -> None:
    before = _generated(keyed)
    chunks = list(oai.chat.completions.create(model="standin/tokens:3", messages=HI, stream=True))

    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The sky is"
    assert _generated(keyed) - before == 3, "the usage Minato asked for was counted"


def test_openai_tool_calls_whole_and_streamed(oai: openai.OpenAI) -> None:
    question: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    done = oai.chat.completions.create(model="llama3.2", messages=question, tools=[WEATHER_TOOL])
    stream = list(oai.chat.completions.create(model="llama3.2", messages=question, tools=[WEATHER_TOOL], stream=True))

    assert done.choices[0].finish_reason == "tool_calls"
    calls = done.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    streamed = [call for chunk in stream if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert streamed[0].function is not None
    assert streamed[0].function.name == "get_weather"


def test_openai_embeddings_completions_and_models(oai: openai.OpenAI) -> None:
    embedding = oai.embeddings.create(model="llama3.2", input=["a", "b"])
    completion = oai.completions.create(model="standin/tokens:2", prompt="x")
    models = [model.id for model in oai.models.list()]
    one = oai.models.retrieve("llama3.2")

    assert len(embedding.data) == 2
    assert completion.choices[0].text == "The sky"
    assert "llama3.2:latest" in models
    assert one.id == "llama3.2"


def test_openai_errors_are_the_sdks_own(oai: openai.OpenAI, keyed: MinatoServer) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=HI)
    with (
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        stranger.chat.completions.create(model="llama3.2", messages=HI)
    with pytest.raises(openai.PermissionDeniedError):
        oai.chat.completions.create(model="gpt-oss:120b-cloud", messages=HI)

    assert isinstance(refused.value.body, dict)
    assert refused.value.body["message"] == "the API key is not valid"


def test_an_openai_stream_ollama_cuts_short_raises_in_the_sdk(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="standin/fail-midstream", messages=HI, stream=True)

    with pytest.raises(openai.APIError, match="before the answer was complete"):
        list(stream)


def _generated(keyed: MinatoServer) -> float:
    """``minato_tokens_generated_total`` over every model label (unlisted models count as ``other``)."""
    metrics = httpx.get(keyed.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    prefix = "minato_tokens_generated_total{"
    return sum(float(line.rpartition(" ")[2]) for line in metrics.splitlines() if line.startswith(prefix))


def test_openai_responses_whole_and_streamed_are_answered_and_counted(
    oai: openai.OpenAI, standin: httpx.Client, keyed: MinatoServer
) -> None:
    before = _generated(keyed)
    done = oai.responses.create(model="standin/tokens:5", input="Why is the sky blue?", instructions="Be brief.")
    events = list(oai.responses.create(model="standin/tokens:5", input="Why is the sky blue?", stream=True))

    assert (done.object, done.status, done.output_text) == ("response", "completed", "The sky is blue because")
    assert done.usage is not None
    assert done.usage.output_tokens == 5
    assert events[0].type == "response.created"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == done.output_text
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 5
    assert _generated(keyed) - before == 10
    records = _received(standin, "/v1/responses")
    assert [json.loads(base64.b64decode(r["raw_body"])).get("stream") for r in records] == [None, True]
    for record in records:
        _assert_no_client_key(record)


def test_a_zstd_responses_body_reaches_ollama_decoded_and_is_answered(
    keyed: MinatoServer, standin: httpx.Client
) -> None:
    body = {"model": "standin/tokens:2", "input": "x"}
    headers = {"Authorization": f"Bearer {USER}", "Content-Encoding": "zstd", "Content-Type": "application/json"}
    packed = zstandard.ZstdCompressor().compress(json.dumps(body).encode())
    response = httpx.post(keyed.url + "/v1/responses", content=packed, headers=headers, timeout=10)

    assert response.status_code == 200
    assert response.json()["output"][0]["content"][0]["text"] == "The sky"
    (record,) = _received(standin, "/v1/responses")
    assert json.loads(base64.b64decode(record["raw_body"])) == body
    assert "content-encoding" not in {name.lower() for name in record["headers"]}


def test_a_responses_stream_ollama_cuts_short_raises_in_the_sdk(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(model="standin/fail-midstream", input="Why is the sky blue?", stream=True)

    # Ollama's stream just ends after three deltas; Minato's closing error frame is what the SDK raises on.
    with pytest.raises(openai.APIError, match="before the answer was complete"):
        list(stream)


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/v1/chat/completions", {}), ("/v1/messages", {"max_tokens": 500}), ("/api/chat", {})],
)
def test_a_door_stream_the_client_leaves_stops_ollama(
    keyed: MinatoServer, standin: httpx.Client, path: str, extra: dict[str, Any]
) -> None:
    body = {"model": "standin/slow", "messages": HI, "stream": True, **extra}
    with (
        httpx.Client(base_url=keyed.url, timeout=10) as client,
        client.stream("POST", path, json=body, headers={"Authorization": f"Bearer {USER}"}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())
    deadline = time.monotonic() + 5
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = standin.get("/_standin/events").json()
        if any(event["type"] == "stream_cancelled" for event in events):
            break
        time.sleep(0.05)

    assert any(event["type"] == "stream_cancelled" for event in events)
    assert not any(event["type"] == "stream_completed" for event in events)
    assert standin.get("/_standin/active").json()["streams"] == 0


# -- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_messages_whole_and_streamed(claude: anthropic.Anthropic, standin: httpx.Client) -> None:
    message = claude.messages.create(model="llama3.2", max_tokens=100, messages=HI)
    with claude.messages.stream(model="llama3.2", max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert text == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens
    records = _received(standin, "/v1/messages")
    assert len(records) == 2
    for record in records:
        _assert_no_client_key(record)


def test_anthropic_errors_are_the_sdks_own(claude: anthropic.Anthropic, keyed: MinatoServer) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=10, messages=HI)
    with (
        anthropic.Anthropic(base_url=keyed.url, api_key="wrong", max_retries=0) as stranger,
        pytest.raises(anthropic.AuthenticationError),
    ):
        stranger.messages.create(model="llama3.2", max_tokens=10, messages=HI)
    with pytest.raises(anthropic.PermissionDeniedError):
        claude.messages.create(model="kimi-k2:1t-cloud", max_tokens=10, messages=HI)


def test_an_anthropic_stream_ollama_cuts_short_raises_in_the_sdk(claude: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError, match="before the answer was complete"),
        claude.messages.stream(model="standin/fail-midstream", max_tokens=100, messages=HI) as stream,
    ):
        list(stream.text_stream)


def test_an_openai_completions_stream_without_usage_sees_none_yet_is_counted(
    oai: openai.OpenAI, keyed: MinatoServer, standin: httpx.Client
) -> None:
    before = _generated(keyed)
    chunks = list(oai.completions.create(model="standin/tokens:3", prompt="x", stream=True))
    asked = list(
        oai.completions.create(
            model="standin/tokens:3", prompt="x", stream=True, stream_options={"include_usage": True}
        )
    )

    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(chunk.choices[0].text for chunk in chunks) == "The sky is"
    assert asked[-1].usage is not None
    assert asked[-1].usage.completion_tokens == 3
    assert _generated(keyed) - before == 6
