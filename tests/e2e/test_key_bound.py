"""A key's ``max_concurrent`` across processes: two workers on one SQLite file, and two replicas on one
Redis. The bounded key's requests never run at once on the stand-in, whichever process took them, while
another key's request runs beside them.

Every answer of the gated model ``standin/gated:<N>`` waits until the test opens the stand-in's gate, so
a generation holds its place for as long as the test wants. The proof that the bound holds *across*
processes is a process's own queue (``GET /queue``, which names its process) showing one of the key's
requests waiting while that process runs none of them; the stand-in's own record of when each answer
started and ended shows the key's answers one after the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.redis_server import RedisServer, RedisServerMissingError
from tests.support.servers import MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e
BOUNDED_MODEL = "standin/gated:1"
FREE_MODEL = "standin/gated:2"
BOUNDED_KEY = "bounded-key-one-at-a-time"
FREE_KEY = "free-key-without-a-bound"
KEYS_FILE = f"""
[keys.bounded]
key = "{BOUNDED_KEY}"
max_concurrent = 1

[keys.free]
key = "{FREE_KEY}"
"""
#: The most requests of the bounded key sent before one is seen waiting in a process running none.
MOST_REQUESTS = 12
#: A bound on waits that must end (a request reaching the stand-in or a queue): far above what they take.
PATIENCE = 60.0


def _keys(directory: Path) -> str:
    keys = directory / "keys.toml"
    keys.write_text(KEYS_FILE)
    return str(keys)


@pytest.fixture(scope="module")
def workers(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with two workers sharing their state in the SQLite file."""
    directory = tmp_path_factory.mktemp("key-bound-workers")
    server = start_minato(standin_url, directory / "workers.log", workers="2", keys_file=_keys(directory))
    deadline = time.monotonic() + PATIENCE  # /health answered as soon as one worker was up: wait for both
    while sum('"Application startup complete."' in line for line in server.log_lines()) < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        time.sleep(0.05)
    yield server
    stop_minato(server)


@pytest.fixture(scope="module")
def replicas(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MinatoServer, ...]]:
    """Two replicas sharing one Redis of their own."""
    directory = tmp_path_factory.mktemp("key-bound-replicas")
    try:
        redis = RedisServer(directory / "redis")
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    settings = {"redis_url": redis.url, "redis_timeout": "0.5", "keys_file": _keys(directory)}
    with redis:
        one = start_minato(standin_url, directory / "one.log", **settings)
        try:
            two = start_minato(standin_url, directory / "two.log", **settings)
        except BaseException:
            stop_minato(one)
            raise
        yield one, two
        stop_minato(two)
        stop_minato(one)


def _get(url: str, key: str, **params: str) -> httpx.Response:
    """One request on a connection of its own (so either worker may take it)."""
    with httpx.Client(timeout=PATIENCE) as client:
        return client.get(url, params=params, headers={"X-API-Key": key})


def _started(standin: httpx.Client, model: str) -> int:
    events = standin.get("/_standin/events").json()
    return sum(1 for event in events if event["model"] == model and event["type"] == "stream_started")


def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _waits_where_none_runs(queue_url: str) -> bool:
    """Whether the process answering ``GET /queue`` holds a request of the bounded key waiting while it
    runs none of them (only another process's running request can hold it back)."""
    report: dict[str, Any] = _get(queue_url, BOUNDED_KEY).json()
    return report["totals"]["running"] == 0 and any(waiting["model"] == BOUNDED_MODEL for waiting in report["waiting"])


def _one_at_a_time(standin_url: str, urls: list[str]) -> None:
    """Send the bounded key's requests to ``urls`` in turn (the first to the first) until a process is seen
    holding one back while another runs, and the free key's beside them; then let them all finish."""
    with httpx.Client(base_url=standin_url, timeout=PATIENCE) as standin, ThreadPoolExecutor(16) as pool:
        standin.post("/_standin/gate", json={"tokens": 0}).raise_for_status()
        standin.delete("/_standin/events").raise_for_status()
        bounded: list[Future[httpx.Response]] = []

        def send(n: int) -> str:
            url = urls[n % len(urls)]
            bounded.append(pool.submit(_get, f"{url}/{BOUNDED_MODEL}", BOUNDED_KEY, message=f"bounded {n}"))
            return url

        try:
            send(0)
            _until(lambda: _started(standin, BOUNDED_MODEL) == 1, "the bounded key's first request never ran")
            free = pool.submit(_get, f"{urls[-1]}/{FREE_MODEL}", FREE_KEY, message="free")
            _until(lambda: _started(standin, FREE_MODEL) == 1, "the other key did not run beside the bounded one")
            held_back = False
            while not held_back:
                assert len(bounded) < MOST_REQUESTS, "no process was seen holding the bounded key back"
                queue_url = f"{send(len(bounded))}/queue"
                deadline = time.monotonic() + PATIENCE / 10
                while not held_back and time.monotonic() < deadline:
                    assert _started(standin, BOUNDED_MODEL) == 1, "two of the bounded key's requests ran at once"
                    held_back = _waits_where_none_runs(queue_url)
        finally:
            standin.post("/_standin/gate", json={"tokens": 2}).raise_for_status()
        answers = [future.result() for future in [*bounded, free]]
        events = standin.get("/_standin/events").json()

    assert [answer.status_code for answer in answers] == [200] * len(answers), [a.text for a in answers]
    sequence = [event["type"] for event in events if event["model"] == BOUNDED_MODEL]
    assert sequence == ["stream_started", "stream_completed"] * len(bounded), "one after the other, never at once"
    free_started = next(n for n, event in enumerate(events) if event["model"] == FREE_MODEL)
    first_done = next(n for n, e in enumerate(events) if e["model"] == BOUNDED_MODEL and e["type"] != "stream_started")
    assert free_started < first_done, "the other key's answer ran while the bounded key's first one did"


def test_a_keys_requests_run_one_at_a_time_across_two_workers(workers: MinatoServer, standin_url: str) -> None:
    _one_at_a_time(standin_url, [workers.url])


def test_a_keys_requests_run_one_at_a_time_across_two_replicas(
    replicas: tuple[MinatoServer, MinatoServer], standin_url: str
) -> None:
    _one_at_a_time(standin_url, [replica.url for replica in replicas])
