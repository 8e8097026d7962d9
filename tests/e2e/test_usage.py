"""``GET /usage`` with real processes: the figures are the stand-in's own token counts, on Minato's routes
and on the native and OpenAI doors; a stream the client left early counts what was relayed; the figures
survive a restart on the same SQLite store, and two replicas on one Redis report the same."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.redis_server import RedisServer, RedisServerMissingError
from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess

pytestmark = pytest.mark.e2e
MODEL = "llama3.2:1b"
GATED = "standin/gated:20"
ALICE, ROOT = "alice-usage-key", "root-usage-key"
KEYS_FILE = f"""
[keys.alice]
key = "{ALICE}"
tokens_per_day = 100000

[keys.root]
key = "{ROOT}"
role = "admin"
"""
#: A bound on waits for something that must happen (a count settling): far above what it takes.
PATIENCE = 30.0


@pytest.fixture(name="standin")
def fx_standin(standin_factory: Callable[..., StandInProcess]) -> StandInProcess:
    """A stand-in of this test's own (its gate is this test's to open)."""
    return standin_factory()


def _keys(directory: Path) -> str:
    keys = directory / "keys.toml"
    keys.write_text(KEYS_FILE)
    return str(keys)


def _client(server: MinatoServer, key: str = ALICE) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30)


def _usage(server: MinatoServer, as_key: str = ALICE, **params: str) -> dict[str, Any]:
    with _client(server, as_key) as client:
        response = client.get("/usage", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _until_requests(server: MinatoServer, requests: int) -> dict[str, Any]:
    """The key's usage once it counts ``requests`` (a stream left early is counted as it closes)."""
    deadline = time.monotonic() + PATIENCE
    while (body := _usage(server))["requests"] < requests:
        assert time.monotonic() < deadline, f"usage never reached {requests} requests: {body}"
        time.sleep(0.05)
    return body


def _figures(usage: dict[str, Any]) -> tuple[Any, ...]:
    """What was counted (the quota's seconds to its reset move on with the clock)."""
    return usage["key"], usage["requests"], usage["tokens"], usage["by_model"]


def _say(text: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


def _ask_everywhere(server: MinatoServer) -> tuple[int, int]:
    """A whole answer and an NDJSON stream on Minato's routes, and a whole answer on the native and the
    OpenAI doors: the prompt and completion tokens the stand-in said it counted, summed."""
    prompt = completion = 0
    with _client(server) as client:
        whole = client.get(f"/{MODEL}", params={"message": "how far is the moon"})
        assert whole.status_code == 200, whole.text
        stats = whole.json()["stats"]
        prompt, completion = prompt + stats["prompt_eval_count"], completion + stats["eval_count"]

        stream = client.get(
            f"/stream/{MODEL}", params={"message": "and the sun"}, headers={"Accept": "application/x-ndjson"}
        )
        assert stream.status_code == 200, stream.text
        stats = json.loads(stream.text.splitlines()[-1])["stats"]
        prompt, completion = prompt + stats["prompt_eval_count"], completion + stats["eval_count"]

        native = client.post("/api/chat", json=_say("hi") | {"stream": False})
        assert native.status_code == 200, native.text
        prompt, completion = prompt + native.json()["prompt_eval_count"], completion + native.json()["eval_count"]

        openai = client.post("/v1/chat/completions", json=_say("hello there"))
        assert openai.status_code == 200, openai.text
        counts = openai.json()["usage"]
        prompt, completion = prompt + counts["prompt_tokens"], completion + counts["completion_tokens"]
    assert prompt > 0
    assert completion > 0
    return prompt, completion


def _leave_a_stream_early(server: MinatoServer, standin: StandInProcess, tokens: int) -> None:
    """Stream from the gated model on the native door, read ``tokens`` token lines, and hang up."""
    httpx.post(f"{standin.url}/_standin/gate", json={"tokens": tokens}, timeout=10).raise_for_status()
    body = {"model": GATED, "messages": [{"role": "user", "content": "tell me everything"}]}
    with _client(server) as client, client.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        read = 0
        for line in response.iter_lines():
            if line:
                assert not json.loads(line)["done"]
                read += 1
            if read == tokens:
                break


def test_usage_is_the_standins_own_counts_and_survives_a_restart(standin: StandInProcess, tmp_path: Path) -> None:
    settings = {"keys_file": _keys(tmp_path)}
    server = start_minato(standin.url, tmp_path / "minato.log", **settings)
    try:
        prompt, completion = _ask_everywhere(server)
        _leave_a_stream_early(server, standin, 3)
        before = _until_requests(server, 5)
        as_admin = _usage(server, ROOT, key="alice")
    finally:
        stop_minato(server)

    assert before["tokens"] == {"prompt": prompt, "completion": completion + 3, "total": prompt + completion + 3}
    assert before["by_model"][MODEL]["requests"] == 4
    assert before["by_model"]["standin/gated:20"] == {
        "requests": 1,
        "tokens": {"prompt": 0, "completion": 3, "total": 3},
    }, "a stream left early: the tokens relayed, and no prompt count (Ollama never said it)"
    assert before["quota"]["remaining"] == 100000 - completion - 3
    assert _figures(as_admin) == _figures(before)

    restarted = start_minato(standin.url, tmp_path / "minato.log", **settings)  # the same SQLite file
    try:
        after = _usage(restarted)
    finally:
        stop_minato(restarted)
    assert _figures(after) == _figures(before)


@pytest.fixture(name="redis")
def fx_redis(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path / "redis")
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


def test_two_replicas_on_one_redis_report_the_same(standin: StandInProcess, redis: RedisServer, tmp_path: Path) -> None:
    settings = {"keys_file": _keys(tmp_path), "redis_url": redis.url, "redis_timeout": "0.5"}
    one = start_minato(standin.url, tmp_path / "one.log", **settings)
    try:
        two = start_minato(standin.url, tmp_path / "two.log", **settings)
        try:
            first = _ask_everywhere(one)
            second = _ask_everywhere(two)
            deadline = time.monotonic() + PATIENCE  # each replica writes what it counted within a second
            while _figures((seen := (_usage(one), _usage(two)))[0]) != _figures(seen[1]) or seen[0]["requests"] < 8:
                assert time.monotonic() < deadline, f"the replicas never agreed: {seen}"
                time.sleep(0.05)
            listing = httpx.get(f"{two.url}/usage/keys", headers={"X-API-Key": ROOT}, timeout=30).json()
        finally:
            stop_minato(two)
    finally:
        stop_minato(one)

    prompt, completion = first[0] + second[0], first[1] + second[1]
    assert seen[0]["requests"] == 8
    assert seen[0]["tokens"] == {"prompt": prompt, "completion": completion, "total": prompt + completion}
    alice = next(entry for entry in listing["keys"] if entry["key"] == "alice")
    assert alice["tokens"] == seen[0]["tokens"]
