"""A pool of backends end to end: Minato as a real process in front of several stand-ins that hold
different models, one of them killed mid-test."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess

StandIns = Callable[..., StandInProcess]
PACED = "standin/paced:12x40"


def _name(standin: StandInProcess) -> str:
    return standin.url.removeprefix("http://")


def _chats(standin: StandInProcess) -> list[dict[str, Any]]:
    records = httpx.get(f"{standin.url}/_standin/requests", timeout=10).json()
    return [r for r in records if r["path"] in {"/api/chat", "/api/generate"} and r["method"] == "POST"]


@pytest.fixture(name="pool")
def fx_pool(tmp_path: Path) -> Iterator[Callable[..., MinatoServer]]:
    started: list[MinatoServer] = []

    def start(*backends: StandInProcess, **settings: str) -> MinatoServer:
        urls = ",".join(backend.url for backend in backends)
        settings = {"ollama_probe_interval": "0.5", **settings}
        server = start_minato(urls, tmp_path / f"minato-{len(started)}.log", **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_minato(server)


def test_a_model_only_one_backend_has_goes_only_there(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2")
    b = standin_factory("--models", "tinyllama")
    minato = pool(a, b)

    answers = [httpx.get(f"{minato.url}/tinyllama", params={"message": "hi"}, timeout=30) for _ in range(3)]
    native = httpx.post(f"{minato.url}/api/chat", json={"model": "tinyllama", "messages": []}, timeout=30)

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert native.status_code == 200
    assert len(_chats(b)) == 4
    assert _chats(a) == []


def test_the_lists_merge_every_backend(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2,tinyllama", "--loaded", "tinyllama")
    b = standin_factory("--models", "llama3.2:1b,tinyllama", "--loaded", "llama3.2:1b")
    minato = pool(a, b)

    tags = httpx.get(f"{minato.url}/api/tags", timeout=10).json()
    ps = httpx.get(f"{minato.url}/api/ps", timeout=10).json()
    v1 = httpx.get(f"{minato.url}/v1/models", timeout=10).json()
    own = httpx.get(f"{minato.url}/models_list/", timeout=10).json()

    assert sorted(m["name"] for m in tags["models"]) == ["llama3.2:1b", "llama3.2:latest", "tinyllama:latest"]
    assert sorted((m["name"], m["backend"]) for m in ps["models"]) == [
        ("llama3.2:1b", _name(b)),
        ("tinyllama:latest", _name(a)),
    ]
    assert sorted(m["id"] for m in v1["data"]) == ["llama3.2:1b", "llama3.2:latest", "tinyllama:latest"]
    held = {m["name"]: sorted(m["backends"]) for m in own["models_list"]}
    assert held == {
        "llama3.2:latest": [_name(a)],
        "tinyllama:latest": sorted([_name(a), _name(b)]),
        "llama3.2:1b": [_name(b)],
    }


def test_a_model_no_backend_has_is_ollamas_own_404(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2")
    b = standin_factory("--models", "tinyllama")
    minato = pool(a, b)
    body = {"model": "llama9", "messages": [{"role": "user", "content": "hi"}]}

    through = httpx.post(f"{minato.url}/api/chat", json=body, timeout=10)
    direct = httpx.post(f"{a.url}/api/chat", json=body, timeout=10)
    openai = httpx.post(f"{minato.url}/v1/chat/completions", json=body, timeout=10)
    openai_direct = httpx.post(f"{a.url}/v1/chat/completions", json=body, timeout=10)
    own = httpx.get(f"{minato.url}/llama9", params={"message": "hi"}, timeout=10)

    assert (through.status_code, through.json()) == (direct.status_code, direct.json())
    assert through.status_code == 404
    assert (openai.status_code, openai.json()) == (openai_direct.status_code, openai_direct.json())
    assert own.status_code == 404


def test_a_dead_backend_is_skipped_and_no_request_fails(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", f"llama3.2,{PACED}", "--loaded", "llama3.2")
    b = standin_factory("--models", f"llama3.2,{PACED}", "--loaded", "llama3.2")
    minato = pool(a, b)
    assert httpx.get(f"{minato.url}/ready", timeout=10).status_code == 200
    a.kill()

    statuses = [httpx.get(f"{minato.url}/llama3.2", params={"message": "hi"}, timeout=30).status_code for _ in range(6)]
    with httpx.stream("GET", f"{minato.url}/stream/{PACED}", params={"message": "hi"}, timeout=30) as stream:
        streamed = b"".join(stream.iter_bytes())
        stream_status = stream.status_code
    native = httpx.post(
        f"{minato.url}/api/chat", json={"model": "llama3.2", "messages": [], "stream": False}, timeout=30
    )
    ready = httpx.get(f"{minato.url}/ready", timeout=10).json()

    assert statuses == [200] * 6
    assert stream_status == 200
    assert streamed
    assert native.status_code == 200
    assert {b["name"]: b["state"] for b in ready["backends"]}[_name(a)] in {"down", "cooling"}


def test_every_backend_dead_is_a_503(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2")
    b = standin_factory("--models", "llama3.2")
    minato = pool(a, b)
    assert httpx.get(f"{minato.url}/ready", timeout=10).status_code == 200
    a.kill()
    b.kill()

    own = httpx.get(f"{minato.url}/llama3.2", params={"message": "hi"}, timeout=30)
    native = httpx.post(f"{minato.url}/api/chat", json={"model": "llama3.2", "messages": []}, timeout=30)
    ready = httpx.get(f"{minato.url}/ready", timeout=10)

    assert own.status_code == 503
    assert native.status_code == 503
    assert isinstance(native.json()["error"], str)
    assert ready.status_code == 503
    assert {b["state"] for b in ready.json()["backends"]} <= {"down", "cooling"}


def test_a_model_loaded_on_one_backend_draws_the_traffic_there(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2")
    b = standin_factory("--models", "llama3.2", "--loaded", "llama3.2")
    c = standin_factory("--models", "llama3.2")
    minato = pool(a, b, c)

    for _ in range(5):
        assert httpx.get(f"{minato.url}/llama3.2", params={"message": "hi"}, timeout=30).status_code == 200

    assert [len(_chats(s)) for s in (a, b, c)] == [0, 5, 0]


def test_a_conversation_stays_on_its_backend(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2", "--loaded", "llama3.2")
    b = standin_factory("--models", "llama3.2", "--loaded", "llama3.2")
    minato = pool(a, b)

    for turn in range(4):
        answer = httpx.get(f"{minato.url}/llama3.2", params={"message": f"turn {turn}", "session": "s1"}, timeout=30)
        assert answer.status_code == 200
        httpx.get(f"{minato.url}/llama3.2", params={"message": "someone else"}, timeout=30)

    turns = {
        s.url: [r for r in _chats(s) if any("turn" in m["content"] for m in r["body"]["messages"])] for s in (a, b)
    }
    assert sorted(len(found) for found in turns.values()) == [0, 4], "every turn on one backend"
    assert sum(len(_chats(s)) for s in (a, b)) == 8


def test_concurrent_streams_spread_once_the_loaded_backend_is_busy(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", PACED, "--loaded", PACED)
    b = standin_factory("--models", PACED)
    minato = pool(a, b, backend_parallel="2")

    def stream(_: int) -> int:
        with httpx.stream("GET", f"{minato.url}/stream/{PACED}", params={"message": "hi"}, timeout=30) as answer:
            for _chunk in answer.iter_bytes():
                pass
            return answer.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as workers:
        statuses = list(workers.map(stream, range(4)))

    assert statuses == [200] * 4
    assert (len(_chats(a)), len(_chats(b))) == (2, 2)


def test_install_pulls_onto_every_backend_and_names_each_line(standin_factory: StandIns, pool: Any) -> None:
    a = standin_factory("--models", "llama3.2")
    b = standin_factory("--models", "llama3.2")
    minato = pool(a, b)

    with httpx.stream("POST", f"{minato.url}/install/smollm:135m", params={"stream": "true"}, timeout=60) as answer:
        lines = [msgspec.json.decode(line) for line in answer.iter_lines() if line]
    listed = httpx.get(f"{minato.url}/models_list/", timeout=10).json()["models_list"]

    assert lines[-1] == {"status": "success"}
    assert {line.get("backend") for line in lines[:-1]} == {_name(a), _name(b)}
    held = {m["name"]: sorted(m["backends"]) for m in listed}
    assert held["smollm:135m"] == sorted([_name(a), _name(b)])


HI = [{"role": "user", "content": "hi"}]


def _ask(minato: MinatoServer, route: str, model: str = "llama3.2") -> int:
    """One generation through one of Minato's doors; its status."""
    if route == "/api/chat":
        answer = httpx.post(
            f"{minato.url}/api/chat", json={"model": model, "messages": HI, "stream": False}, timeout=30
        )
    elif route == "/v1/chat/completions":
        answer = httpx.post(f"{minato.url}/v1/chat/completions", json={"model": model, "messages": HI}, timeout=30)
    else:
        answer = httpx.get(f"{minato.url}/{model}", params={"message": "hi"}, timeout=30)
    return answer.status_code


ROUTES = ["/api/chat", "GET /{model}", "/v1/chat/completions"]
_INVENTORY_PATHS = {"/api/tags", "/api/ps", "/api/version"}


def _generations(standin: StandInProcess) -> list[dict[str, Any]]:
    records = httpx.get(f"{standin.url}/_standin/requests", timeout=10).json()
    return [r for r in records if r["path"] in {"/api/chat", "/v1/chat/completions"}]


def _about_models(standin: StandInProcess) -> list[dict[str, Any]]:
    """The requests a stand-in got that name a model (not the probe's)."""
    records = httpx.get(f"{standin.url}/_standin/requests", timeout=10).json()
    return [r for r in records if r["path"] not in _INVENTORY_PATHS]


def _rm(standin: StandInProcess, model: str = "llama3.2") -> None:
    """``ollama rm`` on the backend itself, behind Minato's back: gone from its tags, still in its ps."""
    assert httpx.request("DELETE", f"{standin.url}/api/delete", json={"model": model}, timeout=10).status_code == 200
    assert [m["name"] for m in httpx.get(f"{standin.url}/api/tags", timeout=10).json()["models"]] == []
    assert [m["name"] for m in httpx.get(f"{standin.url}/api/ps", timeout=10).json()["models"]] == ["llama3.2:latest"]
    httpx.delete(f"{standin.url}/_standin/requests", timeout=10)


def _installed_on(minato: MinatoServer, standin: StandInProcess) -> int:
    backends = httpx.get(f"{minato.url}/ready", timeout=10).json()["backends"]
    return int(next(b.get("installed", 0) for b in backends if b["name"] == _name(standin)))


def test_a_model_deleted_while_loaded_is_served_by_the_backend_that_still_has_it(
    standin_factory: StandIns, pool: Any
) -> None:
    a = standin_factory("--models", "llama3.2", "--loaded", "llama3.2")
    b = standin_factory("--models", "llama3.2", "--loaded", "llama3.2")
    minato = pool(a, b)
    assert _installed_on(minato, a) == 1
    _rm(a)
    deadline = time.monotonic() + 30
    while _installed_on(minato, a) and time.monotonic() < deadline:
        time.sleep(0.1)  # the probe (every 0.5 s) takes A's inventory again
    assert _installed_on(minato, a) == 0
    httpx.delete(f"{b.url}/_standin/requests", timeout=10)

    statuses = {route: [_ask(minato, route) for _ in range(12)] for route in ROUTES}

    assert statuses == {route: [200] * 12 for route in ROUTES}
    assert _about_models(a) == [], "A's /api/ps lists the model, but its /api/tags does not: never routed to"
    assert len(_generations(b)) == 36


@pytest.mark.parametrize("route", ROUTES)
def test_a_backend_minato_wrongly_believes_has_the_model_costs_one_failover(
    standin_factory: StandIns, pool: Any, route: str
) -> None:
    a = standin_factory("--models", "llama3.2", "--loaded", "llama3.2")
    b = standin_factory("--models", "llama3.2")
    minato = pool(a, b, ollama_probe_interval="0")  # no probe: only the 404 can tell Minato
    assert _ask(minato, route) == 200
    assert len(_generations(a)) == 1, "loaded on A: routing prefers it"
    _rm(a)
    httpx.delete(f"{b.url}/_standin/requests", timeout=10)

    statuses = [_ask(minato, route) for _ in range(12)]

    assert statuses == [200] * 12
    asked = _about_models(a)
    assert len(asked) == 1, f"A answered 404 once, then routing went straight to B: {asked}"
    assert asked[0]["body"]["model"] == "llama3.2"
    assert len(_generations(b)) == 12
    held = {m["name"]: m["backends"] for m in httpx.get(f"{minato.url}/models_list/", timeout=10).json()["models_list"]}
    assert held == {"llama3.2:latest": [_name(b)]}
