"""``GET /usage`` and ``GET /usage/keys``: every generation counted once with Ollama's own token counts,
on Minato's routes and on the doors; who may see whose usage; the limits each key stands at."""

from __future__ import annotations

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
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
ALICE, BOB, ROOT, PLAIN, SCRAPER = "alice-key", "bob-key", "root-key", "plain-key", "scraper-key"


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(name="keyed")
async def fx_keyed(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Client]:
    """alice (quota, rate, bound), bob (no limits), root (admin), a plain key and a metrics key."""
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[keys.alice]\nkey = "{ALICE}"\ntokens_per_day = 1000\nrequests_per_minute = 50\nmax_concurrent = 2\n\n'
        f'[keys.bob]\nkey = "{BOB}"\n\n[keys.root]\nkey = "{ROOT}"\nrole = "admin"\n'
    )
    configured = msgspec.structs.replace(settings, keys_file=str(keys), api_keys=(PLAIN,), metrics_keys=(SCRAPER,))
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


async def _usage(client: Client, as_key: str, **params: str) -> dict[str, Any]:
    response = await client.get("/usage", params=params, headers=_as(as_key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_key_sees_nothing_before_it_asks_and_its_limits(keyed: Client) -> None:
    body = await _usage(keyed, ALICE)

    assert body == {
        "key": "alice",
        "role": "user",
        "window_seconds": 86400,
        "requests": 0,
        "tokens": {"prompt": 0, "completion": 0, "total": 0},
        "by_model": {},
        "quota": {"tokens_per_day": 1000, "remaining": 1000, "resets_in_seconds": 0},
        "rate": {"requests_per_minute": 50, "remaining": 49},  # the /usage request itself took one
        "concurrency": {"max": 2, "running": 0, "waiting": 0},
    }
    bob = await _usage(keyed, BOB)
    assert (bob["quota"], bob["rate"]) == (None, None)


async def test_minatos_routes_and_the_doors_count_ollamas_own_tokens(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json={**chat_answer(), "eval_count": 5, "prompt_eval_count": 11})
    ollama.post("/v1/chat/completions").respond(
        200, json={"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    )
    ollama.post("/api/generate").respond(
        200, json={"model": "qwen3", "response": "x", "done": True, "prompt_eval_count": 2, "eval_count": 4}
    )

    assert (await keyed.get("/llama3.2", params={"message": "hi"}, headers=_as(ALICE))).status_code == 200
    door = await keyed.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=_as(ALICE))
    openai = await keyed.post("/v1/chat/completions", json={"model": "llama3.2", "messages": []}, headers=_as(ALICE))
    other = await keyed.post("/api/generate", json={"model": "qwen3", "prompt": "x"}, headers=_as(ALICE))
    assert (door.status_code, openai.status_code, other.status_code) == (200, 200, 200)

    body = await _usage(keyed, ALICE)
    assert body["requests"] == 4
    assert body["tokens"] == {"prompt": 11 + 11 + 7 + 2, "completion": 5 + 5 + 3 + 4, "total": 48}
    assert body["by_model"] == {
        "llama3.2:latest": {"requests": 3, "tokens": {"prompt": 29, "completion": 13, "total": 42}},
        "qwen3:latest": {"requests": 1, "tokens": {"prompt": 2, "completion": 4, "total": 6}},
    }
    assert body["quota"]["remaining"] == 1000 - 17
    assert 0 < body["quota"]["resets_in_seconds"] <= 86400 + 60
    assert (await _usage(keyed, BOB))["requests"] == 0, "another key's usage is its own"


async def test_a_stream_is_counted_with_its_prompt_and_one_left_early_with_what_it_relayed(
    keyed: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").mock(
        return_value=streamed(ndjson(chat_token("a"), chat_token("b"), chat_done(eval_count=7)))
    )
    await keyed.get("/stream/llama3.2", params={"message": "hi"}, headers=_as(BOB))
    ollama.post("/api/chat").mock(return_value=streamed(ndjson(*[chat_token(f"t{i}") for i in range(4)])))  # cut
    await keyed.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=_as(BOB))

    body = await _usage(keyed, BOB)

    assert body["requests"] == 2
    assert body["tokens"] == {"prompt": 26, "completion": 7 + 4, "total": 37}


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/v1/messages", {"content": [], "usage": {"input_tokens": 9, "output_tokens": 4}}),
        ("/v1/responses", {"output": [], "usage": {"input_tokens": 9, "output_tokens": 4}}),
        ("/api/embed", {"embeddings": [[0.1]], "prompt_eval_count": 9}),
        ("/v1/embeddings", {"data": [], "usage": {"prompt_tokens": 9, "total_tokens": 9}}),
    ],
    ids=["anthropic", "responses", "native-embed", "openai-embed"],
)
async def test_every_door_counts_its_dialects_token_counts(
    keyed: Client, ollama: ServedOllama, path: str, answer: dict[str, Any]
) -> None:
    ollama.post(path).respond(200, json=answer)

    sent = await keyed.post(path, json={"model": "llama3.2", "input": "hi", "messages": []}, headers=_as(BOB))

    assert sent.status_code == 200, sent.text
    body = await _usage(keyed, BOB)
    completion = 0 if "embed" in path else 4
    assert body["requests"] == 1
    assert body["tokens"] == {"prompt": 9, "completion": completion, "total": 9 + completion}


async def test_an_openai_stream_counts_its_usage_frame(keyed: Client, ollama: ServedOllama) -> None:
    frames = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}\n\n'
        b"data: [DONE]\n\n"
    )
    ollama.post("/v1/chat/completions").respond(200, content=frames, headers={"content-type": "text/event-stream"})

    sent = await keyed.post(
        "/v1/chat/completions", json={"model": "llama3.2", "messages": [], "stream": True}, headers=_as(BOB)
    )

    assert sent.status_code == 200
    assert b'"usage"' not in sent.content, "the usage frame Minato asked for is not the client's"
    assert (await _usage(keyed, BOB))["tokens"] == {"prompt": 12, "completion": 1, "total": 13}


async def test_a_request_ollama_refused_counts_nothing(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(400, json={"error": "invalid options"})

    refused = await keyed.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=_as(BOB))

    assert refused.status_code == 400
    assert (await _usage(keyed, BOB))["requests"] == 0


async def test_a_key_without_a_name_is_reported_under_its_fingerprint(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await keyed.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=_as(PLAIN))

    body = await _usage(keyed, PLAIN)

    assert len(body["key"]) == 12
    assert body["key"] != PLAIN
    assert body["requests"] == 1
    assert (await _usage(keyed, ROOT, key=body["key"]))["requests"] == 1


async def test_an_admin_sees_any_key_and_every_key(keyed: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await keyed.post("/api/chat", json={"model": "llama3.2", "messages": []}, headers=_as(ALICE))

    alice = await _usage(keyed, ROOT, key="alice")
    listing = await keyed.get("/usage/keys", headers=_as(ROOT))

    assert (alice["key"], alice["requests"], alice["quota"]["tokens_per_day"]) == ("alice", 1, 1000)
    assert listing.status_code == 200
    keys = {entry["key"]: entry for entry in listing.json()["keys"]}
    assert set(keys) == {"alice", "bob", "root", plain_fingerprint(keys)}
    assert keys["alice"]["requests"] == 1
    assert (keys["bob"]["requests"], keys["bob"]["by_model"]) == (0, {}), "a key with no usage is listed with zeros"
    assert keys["root"]["role"] == "admin"


def plain_fingerprint(keys: dict[str, Any]) -> str:
    """The plain key's name: the one that is no keys-file name."""
    [fingerprint] = set(keys) - {"alice", "bob", "root"}
    return fingerprint


async def test_an_admin_naming_an_invented_key_gets_a_404(keyed: Client) -> None:
    response = await keyed.get("/usage", params={"key": "mallory"}, headers=_as(ROOT))

    assert response.status_code == 404
    assert "mallory" in response.json()["detail"]


@pytest.mark.parametrize("named", ["bob", "mallory"], ids=["another-key", "invented-key"])
async def test_a_user_key_asking_for_another_key_gets_a_403_that_reveals_nothing(keyed: Client, named: str) -> None:
    response = await keyed.get("/usage", params={"key": named}, headers=_as(ALICE))

    assert response.status_code == 403
    assert named not in response.text
    assert (await _usage(keyed, ALICE, key="alice"))["key"] == "alice", "naming itself is fine"


async def test_a_user_key_may_not_list_every_key(keyed: Client) -> None:
    response = await keyed.get("/usage/keys", headers=_as(ALICE))

    assert response.status_code == 403


@pytest.mark.parametrize("path", ["/usage", "/usage/keys"])
async def test_a_metrics_key_sees_no_usage(keyed: Client, path: str) -> None:
    response = await keyed.get(path, headers=_as(SCRAPER))

    assert response.status_code == 403


async def test_no_key_is_a_401(keyed: Client) -> None:
    assert (await keyed.get("/usage")).status_code == 401


async def test_a_keyless_deployment_reports_anonymous(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await client.post("/api/chat", json={"model": "llama3.2", "messages": []})

    body = (await client.get("/usage")).json()
    listing = (await client.get("/usage/keys")).json()

    assert (body["key"], body["requests"], body["quota"], body["rate"]) == ("anonymous", 1, None, None)
    assert [entry["key"] for entry in listing["keys"]] == ["anonymous"]
