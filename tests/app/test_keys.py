"""Named keys (``MINATO_KEYS_FILE``): the file's checks, model scopes, per-key rates and token quotas."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from minato.auth.caller import Caller
from minato.settings import Settings
from minato.state.memory import TokenQuota
from minato.state.windows import Standing
from minato.web.app import create_app
from tests.support.keyfiles import ALICE, BOB, CAROL, KEYS_FILE, _file
from tests.support.logs import captured
from tests.support.payloads import catalogue, chat_answer, chat_done, chat_token, ndjson
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
UNNAMED = "unnamed-secret-key-4"


@pytest.fixture(name="named")
async def fx_named(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Client]:
    """Minato with the three named keys above and one unnamed user key."""
    configured = msgspec.structs.replace(settings, keys_file=_file(tmp_path, KEYS_FILE), api_keys=(UNNAMED,))
    app = create_app(configured)
    async with AsyncTestClient(app=app) as client:
        yield client


def _as(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


# -- scopes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/gemma3", "/stream/gemma3", "/llama3.2:1b", "/stream/hf.co/org/repo:q4"])
async def test_a_model_outside_the_keys_scope_is_a_403_before_ollama_is_asked(
    named: Client, ollama: ServedOllama, path: str
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())
    tags = ollama.get("/api/tags").respond(200, json=catalogue("gemma3:latest", "llama3.2:1b"))

    response = await named.get(path, params={"message": "hi"}, headers=_as(ALICE))

    assert response.status_code == 403
    assert "this key may not use model" in response.json()["detail"]
    assert "qwen3:*, llama3.2:latest" in response.json()["detail"]
    assert not chat.called
    assert not tags.called, "refused before the catalog is asked"


async def test_a_model_inside_the_scope_is_answered_in_any_spelling(named: Client, ollama: ServedOllama) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    for path in ("/QWEN3:0.6b", "/library/Llama3.2"):  # alice's quota (5 tokens) lets two answers start
        assert (await named.get(path, params={"message": "hi"}, headers=_as(ALICE))).status_code == 200, path
    assert chat.call_count == 2


async def test_a_vision_request_outside_the_scope_is_a_403(named: Client, ollama: ServedOllama) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())

    response = await named.post("/vision/llava", params={"message": "what is it"}, headers=_as(ALICE))

    assert response.status_code == 403
    assert not chat.called


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("POST", "/install/gemma3", BOB),
        ("POST", "/load/gemma3", BOB),
        ("POST", "/unload/gemma3", BOB),
        ("DELETE", "/models/gemma3", BOB),
        ("GET", "/status/gemma3", BOB),
        ("GET", "/status/gemma3", ALICE),
    ],
)
async def test_lifecycle_routes_refuse_a_model_outside_the_scope_even_for_an_admin(
    named: Client, ollama: ServedOllama, method: str, path: str, key: str
) -> None:
    response = await named.request(method, path, headers=_as(key))

    assert response.status_code == 403, response.text
    assert "may not use model 'gemma3'" in response.json()["detail"]
    assert [call.request.url.path for call in ollama.calls] == []


async def test_an_admin_keys_scope_lets_its_own_models_through(named: Client, ollama: ServedOllama) -> None:
    unload = ollama.post("/api/generate").respond(200, json={"model": "llama3.2:1b", "done": True})

    response = await named.post("/unload/llama3.2:1b", headers=_as(BOB))

    assert response.status_code == 200
    assert unload.called


async def test_lists_show_only_the_keys_models(named: Client, ollama: ServedOllama) -> None:
    ollama.get("/api/tags").respond(
        200, json=catalogue("llama3.2:latest", "llama3.2:1b", "gemma3:latest", "qwen3:0.6b")
    )
    ps = {"models": [{"name": n, "model": n, "size": 1, "size_vram": 1} for n in ("gemma3:latest", "qwen3:0.6b")]}
    ollama.get("/api/ps").respond(200, json=ps)
    ollama.get("/api/version").respond(200, json={"version": "0.12.3"})

    alice_models = await named.get("/models_list/", headers=_as(ALICE))
    alice_running = await named.get("/running", headers=_as(ALICE))
    alice_info = await named.get("/", headers=_as(ALICE))
    carol_models = await named.get("/models_list/", headers=_as(CAROL))

    assert [m["name"] for m in alice_models.json()["models_list"]] == ["llama3.2:latest", "qwen3:0.6b"]
    assert [m["name"] for m in alice_running.json()["running"]] == ["qwen3:0.6b"]
    assert alice_info.json()["installed"] == ["llama3.2:latest", "qwen3:0.6b"]
    assert alice_info.json()["running"] == ["qwen3:0.6b"]
    assert len(carol_models.json()["models_list"]) == 4, "a key without models sees every model"


# -- rates and quotas --------------------------------------------------------------------------


async def test_a_named_keys_own_rate_limit_applies_to_it_alone(named: Client, ollama: ServedOllama) -> None:
    statuses = [(await named.get("/models_list/", headers=_as(CAROL))).status_code for _ in range(3)]
    unlimited = [(await named.get("/models_list/", headers=_as(UNNAMED))).status_code for _ in range(5)]

    assert statuses == [200, 200, 429]
    assert unlimited == [200] * 5, "MINATO_RATE_LIMIT_PER_MINUTE is 0: the unnamed key has no limit"


async def test_a_used_up_token_quota_is_a_429_with_retry_after_naming_the_quota(
    named: Client, ollama: ServedOllama
) -> None:
    chat = ollama.post("/api/chat").respond(200, json=chat_answer())  # eval_count 3; alice's quota is 5

    first = await named.get("/llama3.2", params={"message": "hi"}, headers=_as(ALICE))
    second = await named.get("/llama3.2", params={"message": "hi"}, headers=_as(ALICE))
    refused = await named.get("/llama3.2", params={"message": "hi"}, headers=_as(ALICE))
    others = await named.get("/llama3.2", params={"message": "hi"}, headers=_as(CAROL))

    assert (first.status_code, second.status_code) == (200, 200), "3 then 6 tokens: the second started under 5"
    assert refused.status_code == 429
    assert "quota of 5 generated tokens per day" in refused.json()["detail"]
    assert 24 * 3600 - 60 <= int(refused.headers["retry-after"]) <= 24 * 3600 + 60
    assert chat.call_count == 3, "the refused request never reached Ollama"
    assert others.status_code == 200


async def test_a_streamed_answer_is_charged_to_the_quota_too(named: Client, ollama: ServedOllama) -> None:
    body = ndjson(chat_token("Hi"), chat_done(eval_count=5))
    ollama.post("/api/chat").respond(200, content=body, headers={"Content-Type": "application/x-ndjson"})

    streamed = await named.get("/stream/llama3.2", params={"message": "hi"}, headers=_as(ALICE))
    refused = await named.get("/models_list/", headers=_as(ALICE))

    assert streamed.status_code == 200
    assert refused.status_code == 429


async def test_a_failing_quota_refuses_rather_than_lets_through(settings: Settings, tmp_path: Path) -> None:
    class Broken(TokenQuota):
        async def check(self, caller: Caller) -> Standing:
            raise RuntimeError("quota store unreachable")

    configured = msgspec.structs.replace(settings, keys_file=_file(tmp_path, KEYS_FILE))
    app = create_app(configured, quota=Broken())
    async with AsyncTestClient(app=app) as client:
        refused = await client.get("/models_list/", headers=_as(ALICE))

    assert refused.status_code == 429


# -- observability ---------------------------------------------------------------------------


async def test_tokens_are_counted_by_key_name_and_no_key_is_ever_exposed(named: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())

    with captured() as logs:
        await named.get("/llama3.2", params={"message": "hi"}, headers=_as(ALICE))
        await named.get("/llama3.2", params={"message": "hi"}, headers=_as(UNNAMED))
    exposition = (await named.get("/metrics", headers=_as(BOB))).text

    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    fingerprint = hashlib.sha256(UNNAMED.encode()).hexdigest()[:12]
    by_key = "minato_key_tokens_generated_total"
    assert samples[(by_key, frozenset({("model", "llama3.2:latest"), ("key", "alice")}))] == 3
    assert samples[(by_key, frozenset({("model", "llama3.2:latest"), ("key", fingerprint)}))] == 3
    assert samples[("minato_tokens_generated_total", frozenset({("model", "llama3.2:latest")}))] == 6
    assert [line["key"] for line in logs if line["event"] == "request"] == ["alice", fingerprint]
    for secret in (ALICE, UNNAMED, BOB):
        assert secret not in exposition
        assert secret not in repr(logs)


async def test_without_keys_tokens_are_counted_as_anonymous(client: Client, ollama: ServedOllama) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())

    await client.get("/llama3.2", params={"message": "hi"})
    exposition = (await client.get("/metrics")).text

    assert 'minato_key_tokens_generated_total{key="anonymous",model="llama3.2:latest"} 3.0' in exposition
