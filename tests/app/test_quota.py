"""Token quotas that hold: every relayed token is charged (also of an answer cut short), and each answer
is capped at what the quota has left, on Minato's routes and on every door."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from tests.support.payloads import chat_answer, chat_done, chat_token, ndjson, streamed
from tests.support.served_ollama import Route, ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
QUOTA = 30
METERED = "metered-key"
FREE = "free-key"
AS_METERED = {"Authorization": f"Bearer {METERED}"}
AS_FREE = {"Authorization": f"Bearer {FREE}"}


@pytest.fixture(name="quota")
async def fx_quota(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Client]:
    """A key with a quota of 30 tokens a day, and one without."""
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.metered]\nkey = "{METERED}"\ntokens_per_day = {QUOTA}\n\n[keys.free]\nkey = "{FREE}"\n')
    configured = msgspec.structs.replace(settings, keys_file=str(keys))
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        yield client


def _sent(route: Route) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls.last.request.content)
    return body


# -- each answer is capped at what is left -------------------------------------------------------


@pytest.mark.parametrize(("asked", "sent"), [(None, QUOTA), ("500", QUOTA), ("-1", QUOTA), ("10", 10)])
async def test_an_answer_on_minatos_route_is_capped_at_the_quota_left(
    quota: Client, ollama: ServedOllama, asked: str | None, sent: int
) -> None:
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    params = {"message": "hi"} | ({"max_new_tokens": asked} if asked is not None else {})

    response = await quota.get("/llama3.2", params=params, headers=AS_METERED)

    assert response.status_code == 200
    assert _sent(route)["options"]["num_predict"] == sent


async def test_the_cap_follows_what_is_left_and_a_key_without_a_quota_is_not_capped(
    quota: Client, ollama: ServedOllama
) -> None:
    route = ollama.post("/api/chat").respond(200, json={**chat_answer(), "eval_count": 25})

    await quota.get("/llama3.2", params={"message": "hi"}, headers=AS_METERED)
    await quota.get("/llama3.2", params={"message": "hi"}, headers=AS_METERED)
    second = _sent(route)
    await quota.get("/llama3.2", params={"message": "hi"}, headers=AS_FREE)
    free = _sent(route)
    refused = await quota.get("/llama3.2", params={"message": "hi"}, headers=AS_METERED)

    assert second["options"]["num_predict"] == QUOTA - 25
    assert "options" not in free or "num_predict" not in free["options"]
    assert refused.status_code == 429


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat", {"messages": [], "options": {"num_predict": 4000, "temperature": 0}}, ("options", "num_predict")),
        ("/api/generate", {"prompt": "hi", "options": {"num_predict": -1}}, ("options", "num_predict")),
        ("/api/generate", {"prompt": "hi"}, ("options", "num_predict")),
        ("/v1/chat/completions", {"messages": [], "max_tokens": 1e4}, ("max_tokens",)),
        ("/v1/chat/completions", {"messages": [], "max_completion_tokens": 900}, ("max_completion_tokens",)),
        ("/v1/completions", {"prompt": "hi"}, ("max_tokens",)),
        ("/v1/responses", {"input": "hi", "max_output_tokens": 64}, ("max_output_tokens",)),
        ("/v1/messages", {"messages": [], "max_tokens": 1024}, ("max_tokens",)),
    ],
    ids=[
        "chat",
        "generate-unbounded",
        "generate-unset",
        "openai-float",
        "openai-new-name",
        "completions",
        "responses",
        "anthropic",
    ],
)
async def test_every_door_caps_the_answer_at_the_quota_left(
    quota: Client, ollama: ServedOllama, path: str, body: dict[str, Any], field: tuple[str, ...]
) -> None:
    route = ollama.post(path).respond(200, json={})

    response = await quota.post(path, json={"model": "llama3.2", **body}, headers=AS_METERED)

    assert response.status_code == 200
    sent: Any = _sent(route)
    for name in field:
        sent = sent[name]
    assert sent == QUOTA
    if path == "/api/chat":
        assert _sent(route)["options"]["temperature"] == 0, "the other options travel as they were"


async def test_an_answer_asking_less_than_is_left_and_an_embedding_travel_unchanged(
    quota: Client, ollama: ServedOllama
) -> None:
    chat = ollama.post("/api/chat").respond(200, json={})
    embed = ollama.post("/api/embed").respond(200, json={})
    small = b'{"model":"llama3.2","messages":[],"options":{"num_predict":5}}'
    vector = b'{"model":"all-minilm","input":"hi"}'

    await quota.post("/api/chat", content=small, headers={**AS_METERED, "Content-Type": "application/json"})
    await quota.post("/api/embed", content=vector, headers={**AS_METERED, "Content-Type": "application/json"})

    assert chat.calls.last.request.content == small
    assert embed.calls.last.request.content == vector


# -- every relayed token is charged --------------------------------------------------------------


async def test_a_stream_cut_by_ollama_is_charged_what_it_relayed(quota: Client, ollama: ServedOllama) -> None:
    tokens = [chat_token(f"t{i} ") for i in range(12)]
    ollama.post("/api/chat").mock(return_value=streamed(ndjson(*tokens)))  # no done line: cut

    ndjson_stream = {**AS_METERED, "Accept": "application/x-ndjson"}
    cut = await quota.get("/stream/llama3.2", params={"message": "hi"}, headers=ndjson_stream)
    ollama.post("/api/chat").respond(200, json=chat_answer())
    after = await quota.get("/llama3.2", params={"message": "hi"}, headers=AS_METERED)
    route = ollama.routes[-1]

    assert cut.status_code == 200
    assert b'"error"' in cut.content
    assert _sent(route)["options"]["num_predict"] == QUOTA - 12, after.text


async def test_a_door_stream_that_fails_midway_is_charged_what_it_relayed(quota: Client, ollama: ServedOllama) -> None:
    lines = ndjson(*[chat_token(f"t{i}") for i in range(9)], {"error": "the runner crashed"})
    ollama.post("/api/chat").mock(return_value=streamed(lines))

    failed = await quota.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=AS_METERED)
    route = ollama.post("/api/chat").respond(200, json={})
    await quota.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=AS_METERED)

    assert failed.status_code == 200
    assert b"the runner crashed" in failed.content
    assert _sent(route)["options"]["num_predict"] == QUOTA - 9


async def test_a_completed_stream_is_charged_ollamas_own_count(quota: Client, ollama: ServedOllama) -> None:
    lines = ndjson(chat_token("a"), chat_token("b"), chat_done(eval_count=7))
    ollama.post("/api/chat").mock(return_value=streamed(lines))

    await quota.get("/stream/llama3.2", params={"message": "hi"}, headers=AS_METERED)
    route = ollama.post("/api/chat").respond(200, json=chat_answer())
    await quota.get("/llama3.2", params={"message": "hi"}, headers=AS_METERED)

    assert _sent(route)["options"]["num_predict"] == QUOTA - 7
