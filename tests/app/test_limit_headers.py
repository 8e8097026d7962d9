"""The limits and timings every generation response carries: OpenAI's ``x-ratelimit-*`` headers for a key
with a rate or a quota, and ``Server-Timing``, on Minato's own generation routes and on every door; a 429
carries the limits with ``Retry-After``, in the door's own error shape."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from minato.settings import Settings
from minato.web.app import create_app
from minato.web.limit_headers import RATE_LIMIT_HEADERS, SERVER_TIMING
from tests.support.keyfiles import _file
from tests.support.payloads import PNG_1PX, chat_answer, show
from tests.support.served_ollama import ServedOllama

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
LIMITED = "limited-secret-key"
PLAIN = "plain-secret-key"
RATE = 60
QUOTA = 1000
KEYS = f"""
[keys.limited]
key = "{LIMITED}"
requests_per_minute = {RATE}
tokens_per_day = {QUOTA}

[keys.plain]
key = "{PLAIN}"
"""
AS_LIMITED = {"Authorization": f"Bearer {LIMITED}"}
AS_PLAIN = {"Authorization": f"Bearer {PLAIN}"}
#: A duration as OpenAI writes its resets (Go's format).
DURATION = re.compile(r"0s|\d+(\.\d+)?ms|(\d+h)?(\d+m)?\d+(\.\d+)?s")
TIMING = re.compile(r"queue;dur=\d+\.\d, minato;dur=\d+\.\d(, ollama;dur=\d+\.\d)?")

#: Every route that generates, on Minato's own API and on every door: (method, path, request keywords).
GENERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/llama3.2", {"params": {"message": "hi"}}),
    ("POST", "/llama3.2", {"json": {"message": "hi"}}),
    ("GET", "/stream/llama3.2", {"params": {"message": "hi"}}),
    ("POST", "/stream/llama3.2", {"json": {"message": "hi"}}),
    ("GET", "/llama3.2", {"params": {"message": "hi", "session": "talk"}}),
    ("POST", "/vision/llava:7b", {"params": {"message": "hi"}, "files": [("images", ("a.png", PNG_1PX, "image/png"))]}),
    (
        "POST",
        "/stream/vision/llava:7b",
        {"params": {"message": "hi"}, "files": [("images", ("a.png", PNG_1PX, "image/png"))]},
    ),
    ("POST", "/api/chat", {"json": {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}}),
    ("POST", "/api/generate", {"json": {"model": "llama3.2", "prompt": "hi", "stream": False}}),
    ("POST", "/api/embed", {"json": {"model": "llama3.2", "input": "hi"}}),
    ("POST", "/api/embeddings", {"json": {"model": "llama3.2", "prompt": "hi"}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}}),
    ("POST", "/v1/completions", {"json": {"model": "llama3.2", "prompt": "hi"}}),
    ("POST", "/v1/responses", {"json": {"model": "llama3.2", "input": "hi"}}),
    ("POST", "/v1/embeddings", {"json": {"model": "llama3.2", "input": "hi"}}),
    (
        "POST",
        "/v1/messages",
        {"json": {"model": "llama3.2", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}},
    ),
]
GENERATION_IDS = [f"{method} {path}{' session' if 'session' in str(kw) else ''}" for method, path, kw in GENERATIONS]
#: Routes that generate nothing: no limit headers, no Server-Timing (the rate is still taken on them).
NOT_GENERATIONS = [("GET", "/models_list/"), ("GET", "/health"), ("GET", "/api/tags"), ("GET", "/v1/models")]


@pytest.fixture(name="limited")
async def fx_limited(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Client]:
    """A key with a rate and a quota, and a key with neither; llava sees images."""
    ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))
    configured = msgspec.structs.replace(settings, keys_file=_file(tmp_path, KEYS))
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "request_kw"), GENERATIONS, ids=GENERATION_IDS)
async def test_every_generation_route_and_door_reports_the_keys_limits_and_timings(
    limited: Client, method: str, path: str, request_kw: dict[str, Any]
) -> None:
    response = await limited.request(method, path, headers=AS_LIMITED, **request_kw)

    assert response.status_code == 200, response.text
    headers = response.headers
    assert headers["x-ratelimit-limit-requests"] == str(RATE)
    assert headers["x-ratelimit-remaining-requests"] == str(RATE - 1)
    assert headers["x-ratelimit-reset-requests"] == "1s", "one request of 60 a minute comes back in a second"
    assert headers["x-ratelimit-limit-tokens"] == str(QUOTA)
    assert 0 < int(headers["x-ratelimit-remaining-tokens"]) <= QUOTA
    assert DURATION.fullmatch(headers["x-ratelimit-reset-tokens"])
    assert TIMING.fullmatch(headers["server-timing"]), headers["server-timing"]
    streamed = path.startswith("/stream/") or path == "/api/chat"  # Ollama's chat streams unless told not to
    assert ("ollama;dur=" in headers["server-timing"]) is not streamed, "a stream's head leaves before Ollama is done"


@pytest.mark.parametrize(("method", "path", "request_kw"), GENERATIONS, ids=GENERATION_IDS)
async def test_a_key_without_limits_gets_no_limit_headers_but_the_timings(
    limited: Client, method: str, path: str, request_kw: dict[str, Any]
) -> None:
    response = await limited.request(method, path, headers=AS_PLAIN, **request_kw)

    assert response.status_code == 200, response.text
    assert not any(name in response.headers for name in RATE_LIMIT_HEADERS)
    assert TIMING.fullmatch(response.headers["server-timing"])


@pytest.mark.parametrize(("method", "path", "request_kw"), GENERATIONS, ids=GENERATION_IDS)
async def test_a_deployment_without_keys_reports_no_limits_but_the_timings(
    client: Client, ollama: ServedOllama, method: str, path: str, request_kw: dict[str, Any]
) -> None:
    ollama.post("/api/show").respond(200, json=show(["completion", "vision"]))

    response = await client.request(method, path, **request_kw)

    assert response.status_code == 200, response.text
    assert not any(name in response.headers for name in RATE_LIMIT_HEADERS)
    assert TIMING.fullmatch(response.headers["server-timing"])


@pytest.mark.parametrize(("method", "path"), NOT_GENERATIONS)
async def test_a_route_that_generates_nothing_carries_neither(limited: Client, method: str, path: str) -> None:
    response = await limited.request(method, path, headers=AS_LIMITED)

    assert response.status_code == 200
    assert not any(name in response.headers for name in (*RATE_LIMIT_HEADERS, SERVER_TIMING))


async def test_a_whole_answer_counts_its_own_tokens_and_a_stream_head_cannot(
    limited: Client, ollama: ServedOllama
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())  # eval_count 3

    first = await limited.get("/llama3.2", params={"message": "hi"}, headers=AS_LIMITED)
    second = await limited.get("/llama3.2", params={"message": "hi"}, headers=AS_LIMITED)

    assert first.headers["x-ratelimit-remaining-tokens"] == str(QUOTA - 3)
    assert first.headers["x-ratelimit-reset-tokens"] == "24h1m0s", "charged now: gone with this minute, 24 h on"
    assert second.headers["x-ratelimit-remaining-tokens"] == str(QUOTA - 6)
    assert second.headers["x-ratelimit-remaining-requests"] == str(RATE - 2)


async def test_a_stream_reports_the_quota_as_it_stood_when_it_began(limited: Client) -> None:
    response = await limited.get("/stream/llama3.2", params={"message": "hi"}, headers=AS_LIMITED)

    assert response.headers["x-ratelimit-remaining-tokens"] == str(QUOTA)
    assert response.headers["x-ratelimit-reset-tokens"] == "0s", "nothing was counted when its head left"


async def test_the_openai_doors_whole_answer_subtracts_the_completion_tokens(limited: Client) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}

    response = await limited.post("/v1/chat/completions", json=body, headers=AS_LIMITED)

    used = response.json()["usage"]["completion_tokens"]
    assert used > 0
    assert response.headers["x-ratelimit-remaining-tokens"] == str(QUOTA - used)


# -- 429s ---------------------------------------------------------------------------------------------

RATE_ONLY = 'key = "{key}"\nrequests_per_minute = 1\ntokens_per_day = 10\n'


@pytest.fixture(name="strict")
async def fx_strict(settings: Settings, ollama: ServedOllama, tmp_path: Path) -> AsyncIterator[Client]:
    """A key of one request a minute and ten tokens a day."""
    configured = msgspec.structs.replace(
        settings, keys_file=_file(tmp_path, "[keys.strict]\n" + RATE_ONLY.format(key=LIMITED))
    )
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), [("GET", "/llama3.2"), ("GET", "/models_list/")])
async def test_a_429_for_the_rate_carries_the_limits_and_retry_after(
    strict: Client, ollama: ServedOllama, method: str, path: str
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())
    await strict.request(method, path, params={"message": "hi"}, headers=AS_LIMITED)

    refused = await strict.request(method, path, params={"message": "hi"}, headers=AS_LIMITED)

    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.fullmatch(refused.headers["x-ratelimit-reset-requests"])
    assert refused.headers["x-ratelimit-reset-requests"] != "0s"
    assert refused.headers["x-ratelimit-limit-tokens"] == "10", "both limits were asked before either refused"


async def test_a_429_for_the_quota_carries_the_limits_and_retry_after(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    ollama.post("/api/chat").respond(200, json=chat_answer())  # eval_count 3
    keys = f'[keys.metered]\nkey = "{LIMITED}"\nrequests_per_minute = 100\ntokens_per_day = 3\n'
    configured = msgspec.structs.replace(settings, keys_file=_file(tmp_path, keys))
    async with AsyncTestClient(app=create_app(configured)) as client:
        spent = await client.get("/llama3.2", params={"message": "hi"}, headers=AS_LIMITED)
        refused = await client.get("/llama3.2", params={"message": "hi"}, headers=AS_LIMITED)

    assert spent.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.status_code == 429
    assert "quota" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) > 23 * 3600
    assert refused.headers["x-ratelimit-limit-tokens"] == "3"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.headers["x-ratelimit-reset-tokens"].startswith("24h")
    assert refused.headers["x-ratelimit-remaining-requests"] == "98"
    assert TIMING.fullmatch(refused.headers["server-timing"]), "a generation route's refusal says where time went"


async def test_the_openai_doors_429_is_in_openais_shape_with_the_limits(strict: Client) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    await strict.post("/v1/chat/completions", json=body, headers=AS_LIMITED)

    refused = await strict.post("/v1/chat/completions", json=body, headers=AS_LIMITED)

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, "OpenAI's error object, which the SDKs read"
    assert "requests per minute" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1


async def test_cors_lets_a_browser_read_the_new_headers(
    settings: Settings, ollama: ServedOllama, tmp_path: Path
) -> None:
    configured = msgspec.structs.replace(
        settings, keys_file=_file(tmp_path, KEYS), cors_origins=("https://app.example",)
    )
    async with AsyncTestClient(app=create_app(configured)) as client:
        response = await client.get(
            "/llama3.2", params={"message": "hi"}, headers={"Origin": "https://app.example", **AS_LIMITED}
        )

    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {*RATE_LIMIT_HEADERS, "server-timing", "retry-after"} <= exposed


async def test_a_stranger_learns_no_keys_limits(limited: Client) -> None:
    refused = await limited.get("/llama3.2", params={"message": "hi"}, headers={"Authorization": "Bearer wrong"})

    assert refused.status_code == 401
    assert not any(name in refused.headers for name in RATE_LIMIT_HEADERS)
