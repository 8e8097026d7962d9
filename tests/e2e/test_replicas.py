"""Two Minato processes (two replicas) on one Redis and one stand-in: one conversation, one turn at a time,
one rate limit between them; with Redis gone, nothing is served without it, and it is back without a
restart of either."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.redis_server import RedisServer, RedisServerMissingError
from tests.support.servers import MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e
MODEL = "llama3.2:1b"
#: An answer that takes a while (20 tokens, 20 ms apart), so two turns sent at once do overlap.
SLOW_MODEL = "standin/paced:20x20"
TURNS_KEY = "turns-key-without-a-limit"
LIMITED_KEY = "limited-key"
RATE = 3
KEYS_FILE = f"""
[keys.turns]
key = "{TURNS_KEY}"
requests_per_minute = 0
"""


@dataclass
class Replicas:
    """Two Minato processes sharing one Redis."""

    one: MinatoServer
    two: MinatoServer
    redis: RedisServer


@pytest.fixture(scope="module")
def replicas(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two replicas on one Redis of their own, with a key limited to RATE requests a minute and one without."""
    directory = tmp_path_factory.mktemp("replicas")
    try:
        redis = RedisServer(directory / "redis")
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    keys = directory / "keys.toml"
    keys.write_text(KEYS_FILE)
    settings = {
        "redis_url": redis.url,
        "redis_timeout": "0.5",
        "keys_file": str(keys),
        "api_keys": LIMITED_KEY,
        "rate_limit_per_minute": str(RATE),
        "open_probes": "true",
    }
    with redis:
        one = start_minato(standin_url, directory / "one.log", **settings)
        try:
            two = start_minato(standin_url, directory / "two.log", **settings)
        except BaseException:
            stop_minato(one)
            raise
        yield Replicas(one=one, two=two, redis=redis)
        stop_minato(two)
        stop_minato(one)


def _get(url: str, key: str = TURNS_KEY, **params: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.get(url, params=params, headers={"X-API-Key": key})


def _chats(standin_url: str, marker: str) -> list[list[dict[str, Any]]]:
    """The messages of every chat request the stand-in received about ``marker``, in arrival order."""
    with httpx.Client(base_url=standin_url, timeout=10) as standin:
        recorded = standin.get("/_standin/requests").json()
    return [
        request["body"]["messages"]
        for request in recorded
        if request["path"] == "/api/chat" and marker in request["body"]["messages"][-1]["content"]
    ]


def _generations(standin_url: str) -> int:
    with httpx.Client(base_url=standin_url, timeout=10) as standin:
        recorded = standin.get("/_standin/requests").json()
    return sum(request["path"] in ("/api/chat", "/api/generate") for request in recorded)


def test_a_conversation_started_on_one_replica_continues_on_the_other(replicas: Replicas, standin_url: str) -> None:
    session = f"replicas-{time.monotonic_ns()}"

    first = _get(f"{replicas.one.url}/{MODEL}", message=f"{session} first", session=session)
    second = _get(f"{replicas.two.url}/{MODEL}", message=f"{session} second", session=session)
    seen_by_one = _get(f"{replicas.one.url}/chat/{session}")
    chats = _chats(standin_url, session)

    assert (first.status_code, second.status_code, seen_by_one.status_code) == (200, 200, 200)
    assert [m["content"] for m in chats[-1][:-1]] == [f"{session} first", first.json()["response"]], (
        "the second replica sent the first turn along"
    )
    messages = seen_by_one.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [messages[0]["content"], messages[2]["content"]] == [f"{session} first", f"{session} second"]


def test_two_turns_sent_to_both_replicas_at_once_run_one_after_the_other(replicas: Replicas, standin_url: str) -> None:
    session = f"serial-{time.monotonic_ns()}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(
                lambda server: _get(
                    f"{server.url}/{SLOW_MODEL}", message=f"{session} from {server.url}", session=session
                ),
                [replicas.one, replicas.two],
            )
        )
    chats = _chats(standin_url, session)
    conversation = _get(f"{replicas.two.url}/chat/{session}").json()

    assert [answer.status_code for answer in answers] == [200, 200]
    assert sorted(len(messages) for messages in chats) == [1, 3], "the second turn carried the first"
    assert len(conversation["messages"]) == 4


def test_a_rate_limit_admits_its_rate_across_both_replicas_not_twice_it(replicas: Replicas) -> None:
    servers = [replicas.one, replicas.two] * (2 * RATE)

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda server: _get(f"{server.url}/models_list/", key=LIMITED_KEY), servers))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * RATE + [429] * (len(servers) - RATE), f"{RATE} a minute for the key, not per replica"
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 // RATE


def test_with_redis_down_nothing_is_served_without_it_and_it_resumes_when_redis_is_back(
    replicas: Replicas, standin_url: str
) -> None:
    session = f"down-{time.monotonic_ns()}"
    replicas.redis.stop()
    try:
        before = _generations(standin_url)
        turn = _get(f"{replicas.one.url}/{MODEL}", message=f"{session} lost", session=session)
        limited = _get(f"{replicas.two.url}/models_list/", key=LIMITED_KEY)
        ready = httpx.get(f"{replicas.one.url}/ready", timeout=10)
        metrics = httpx.get(f"{replicas.two.url}/metrics", timeout=10).text
        after = _generations(standin_url)
    finally:
        replicas.redis.start()  # on the same port, empty
    back = _get(f"{replicas.two.url}/{MODEL}", message=f"{session} back", session=session)
    ready_again = httpx.get(f"{replicas.one.url}/ready", timeout=10)

    assert turn.status_code == 503
    assert int(turn.headers["Retry-After"]) >= 1
    assert "shared state (Redis at 127.0.0.1:" in turn.text
    assert (limited.status_code, "Retry-After" in limited.headers) == (503, True), "a limited key is not let past"
    assert after == before, "nothing reached Ollama"
    assert ready.status_code == 503
    assert ready.json()["state"]["name"] == "redis"
    assert ready.json()["state"]["status"] == "down"
    assert "minato_redis_up 0.0" in metrics
    assert back.status_code == 200, back.text
    assert _chats(standin_url, f"{session} back")[-1][:-1] == [], "the lost turn was never recorded"
    assert (ready_again.status_code, ready_again.json()["state"]["status"]) == (200, "up")
