"""Fair turns across keys, with Minato and the stand-in as real processes.

Every answer asks for ``standin/gated:1``, whose one token the stand-in writes only once the test
opens its gate: until then the generation holding the one slot runs on and every other one waits in
Minato's queue, so the test lines the queue up exactly. Once the gate opens, each answer ends as soon
as it starts, so the order in which the stand-in received them is the order Minato served them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

MODEL: Final = "standin/gated:1"
ADMIN: Final = "fair-admin-key"
KEYS: Final = {"a": "fair-key-of-a", "b": "fair-key-of-b", "c": "fair-key-of-c", "d": "fair-key-of-d"}
#: A label in each question, read back from what the stand-in received.
_LABEL: Final = re.compile(r"\b([a-d]\d+)\b")
DEADLINE_S: Final = 60.0


def _keys_file(path: Path, **tables: str) -> str:
    lines = [f'[keys.admin]\nkey = "{ADMIN}"\nrole = "admin"\n']
    for name, secret in KEYS.items():
        lines.append(f'[keys.{name}]\nkey = "{secret}"\n{tables.get(name, "")}\n')
    path.write_text("\n".join(lines))
    return str(path)


@dataclass
class Bench:
    """Minato with one stand-in of its own (the gate is the stand-in's), and requests in flight."""

    minato: MinatoServer
    standin: httpx.Client
    client: httpx.Client
    pool: ThreadPoolExecutor
    sent: list[Future[httpx.Response]]

    def queue(self) -> dict[str, Any]:
        answer = self.client.get("/queue", headers={"X-API-Key": ADMIN})
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def arrivals(self) -> list[str]:
        """The labels of the generations the stand-in received, in the order it received them."""
        received = self.standin.get("/_standin/requests").json()
        labels = []
        for record in received:
            if record["path"] == "/api/chat":
                found = _LABEL.search(str(record["body"]))
                labels.append(found.group(1) if found else "?")
        return labels

    def send(self, key: str, label: str, *, door: bool = False) -> None:
        """Ask for an answer as ``key``, through Minato's own route or Ollama's door; return once it
        holds its place: running at the stand-in, or waiting in Minato's queue."""
        before = self.queue()["totals"]
        arrived = len(self.arrivals())
        headers = {"X-API-Key": KEYS[key]}

        def ask() -> httpx.Response:
            if door:
                payload = {"model": MODEL, "messages": [{"role": "user", "content": label}], "stream": False}
                return self.client.post("/api/chat", json=payload, headers=headers, timeout=DEADLINE_S)
            return self.client.get(f"/{MODEL}", params={"message": label}, headers=headers, timeout=DEADLINE_S)

        self.sent.append(self.pool.submit(ask))
        eventually(
            lambda: (self.queue()["totals"], len(self.arrivals())),
            lambda now: now[0]["waiting"] > before["waiting"] or now[1] > arrived,
            f"{label} running or queued",
            DEADLINE_S,
        )

    def open_gate(self) -> list[str]:
        """Let every answer finish; the order the stand-in received them in."""
        self.standin.post("/_standin/gate", json={"tokens": 1}).raise_for_status()
        answers = [future.result(timeout=DEADLINE_S) for future in self.sent]
        assert [answer.status_code for answer in answers] == [200] * len(answers)
        return self.arrivals()


@pytest.fixture(name="bench")
def fx_bench(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    opened: list[tuple[StandInProcess, MinatoServer, ThreadPoolExecutor, httpx.Client, httpx.Client]] = []

    @contextmanager
    def start(max_generations: int = 1, **tables: str) -> Iterator[Bench]:
        standin = StandInProcess()
        keys = _keys_file(tmp_path / f"keys{len(opened)}.toml", **tables)
        server = start_minato(
            standin.url,
            tmp_path / f"minato{len(opened)}.log",
            keys_file=keys,
            max_generations=str(max_generations),
            max_queue="100",
        )
        pool = ThreadPoolExecutor(max_workers=32)
        client = httpx.Client(base_url=server.url, timeout=DEADLINE_S)
        introspect = httpx.Client(base_url=standin.url, timeout=10)
        opened.append((standin, server, pool, client, introspect))
        yield Bench(server, introspect, client, pool, [])

    yield start
    for standin, server, pool, client, introspect in opened:
        introspect.post("/_standin/gate", json={"tokens": 1})
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()
        introspect.close()
        stop_minato(server)
        standin.stop()


def test_a_key_that_comes_later_gets_its_turns_among_the_earlier_keys_requests(bench: Callable[..., Any]) -> None:
    with bench() as fair:
        for n in range(1, 7):
            fair.send("a", f"a{n}")
        assert fair.arrivals() == ["a1"], "a1 runs, the others wait"
        fair.send("b", "b1", door=True)
        fair.send("b", "b2", door=True)

        queue = fair.queue()
        mine = fair.client.get("/queue", headers={"X-API-Key": KEYS["b"]}).json()
        used = fair.client.get("/usage", headers={"X-API-Key": KEYS["b"]}).json()
        order = fair.open_gate()

    assert [(r["key"], r["model"]) for r in queue["running"]] == [("a", MODEL)]
    assert [w["key"] for w in queue["waiting"]] == ["a", "b", "a", "b", "a", "a", "a"]
    assert queue["totals"] == {"running": 1, "waiting": 7}
    assert [(w["key"], w["position"]) for w in mine["waiting"]] == [("b", 2), ("b", 4)]
    assert mine["running"] == []
    assert used["concurrency"]["waiting"] == 2, "/usage counts the key's requests waiting"
    # b1 no later than the second request after a1 (running when b came), b2 no later than the fourth.
    assert order.index("b1") - order.index("a1") <= 2
    assert order.index("b2") - order.index("a1") <= 4
    assert [label for label in order if label.startswith("a")] == [f"a{n}" for n in range(1, 7)]
    assert order == ["a1", "a2", "b1", "a3", "b2", "a4", "a5", "a6"]


def test_a_key_of_weight_two_gets_two_turns_for_each_of_a_key_of_weight_one(bench: Callable[..., Any]) -> None:
    with bench(a="weight = 2") as fair:
        for n in range(1, 7):
            fair.send("a", f"a{n}")
        for n in range(1, 4):
            fair.send("b", f"b{n}")
        order = fair.open_gate()

    assert "".join(label[0] for label in order) == "aabaabaab"


def test_a_burst_of_one_key_does_not_keep_another_keys_single_request_waiting(
    bench: Callable[..., Any],
) -> None:
    with bench() as fair:
        for n in range(1, 16):
            fair.send("a", f"a{n}")
        fair.send("c", "c1", door=True)
        order = fair.open_gate()

    assert order.index("c1") <= 2, order


def test_a_key_at_max_concurrent_runs_one_at_a_time_while_another_key_runs_beside_it(
    bench: Callable[..., Any],
) -> None:
    with bench(max_generations=4, c="max_concurrent = 1") as fair:
        fair.send("c", "c1")
        fair.send("c", "c2")
        fair.send("d", "d1")

        arrived = fair.arrivals()
        queue = fair.queue()
        order = fair.open_gate()

    # d1 was sent after c2 began waiting, and reached Ollama: c2 is held by its key's bound alone.
    assert arrived == ["c1", "d1"]
    assert [w["key"] for w in queue["waiting"]] == ["c"]
    assert sorted(r["key"] for r in queue["running"]) == ["c", "d"]
    assert order == ["c1", "d1", "c2"]
