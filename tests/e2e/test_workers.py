"""Two worker processes of one Minato without Redis (``MINATO_WORKERS=2``): they share their turns and
limits through the SQLite file of the conversations.

Every request goes on a connection of its own, so either worker may take it; each test checks, from
the workers' own ``/metrics`` (one registry per process), that both of them served some.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.servers import MinatoServer, both_workers_answered, start_minato, stop_minato

pytestmark = pytest.mark.e2e
MODEL = "llama3.2:1b"
TURNS_KEY = "turns-key-without-a-limit"
LIMITED_KEY = "limited-key"
RATE = 4
KEYS_FILE = f"""
[keys.turns]
key = "{TURNS_KEY}"
requests_per_minute = 0
"""


@pytest.fixture(scope="module")
def workers(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with two workers, a key limited to RATE requests a minute and one without a limit."""
    directory = tmp_path_factory.mktemp("workers")
    keys = directory / "keys.toml"
    keys.write_text(KEYS_FILE)
    server = start_minato(
        standin_url,
        directory / "workers.log",
        workers="2",
        keys_file=str(keys),
        api_keys=LIMITED_KEY,
        rate_limit_per_minute=str(RATE),
        open_probes="true",
    )
    deadline = time.monotonic() + 20  # /health answered as soon as one worker was up: wait for both
    while time.monotonic() < deadline and _started(server) < 2:
        time.sleep(0.05)
    yield server
    stop_minato(server)


def _started(server: MinatoServer) -> int:
    return sum('"Application startup complete."' in line for line in server.log_lines())


def _get(url: str, **params: str) -> httpx.Response:
    """One request on a connection of its own."""
    key = params.pop("key")
    with httpx.Client(timeout=30) as client:
        return client.get(url, params=params, headers={"X-API-Key": key})


def test_both_workers_started_on_one_sqlite_file(workers: MinatoServer) -> None:
    checked = [line for line in workers.log_lines() if '"session_store_checked"' in line]

    assert _started(workers) == 2
    assert len(checked) == 2, "each worker opened the conversations' file"
    assert Path(workers.log_path.with_suffix(".db")).exists()


def test_ten_concurrent_turns_on_one_conversation_each_see_every_earlier_turn(
    workers: MinatoServer, standin_url: str
) -> None:
    session = f"workers-{time.monotonic_ns()}"
    with httpx.Client(base_url=standin_url, timeout=10) as standin:
        standin.delete("/_standin/requests")
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(
                pool.map(
                    lambda n: _get(f"{workers.url}/{MODEL}", message=f"{session} q{n}", session=session, key=TURNS_KEY),
                    range(10),
                )
            )
        chats = [
            request["body"]["messages"]
            for request in standin.get("/_standin/requests").json()
            if request["path"] == "/api/chat" and session in request["body"]["messages"][-1]["content"]
        ]
    with httpx.Client(timeout=10) as client:
        conversation = client.get(f"{workers.url}/chat/{session}", headers={"X-API-Key": TURNS_KEY}).json()

    assert [answer.status_code for answer in answers] == [200] * 10
    assert sorted(len(messages) - 1 for messages in chats) == [2 * k for k in range(10)], (
        "each turn carried all the turns before it, and no two the same"
    )
    assert len(conversation["messages"]) == 20
    assert both_workers_answered(workers, "/{model_name}", 10), "both workers took turns"


def test_a_rate_limit_admits_its_rate_across_both_workers(workers: MinatoServer) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: _get(f"{workers.url}/models_list/", key=LIMITED_KEY), range(3 * RATE)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * RATE + [429] * (2 * RATE), f"{RATE} a minute for the key, not {RATE} per worker"
    assert both_workers_answered(workers, "/models_list", 3 * RATE), "both workers answered the key"
