"""Keys without a restart, end to end: ``minato keys`` against a running ``minato serve``, the keys
file watched by every worker, ``SIGHUP`` passed on to each of them, and a broken file changing nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.servers import MinatoServer, answers_from_both_workers, start_minato, stop_minato
from tests.support.standin.process import StandInProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:1b"
#: The issue's bound: a key revoked on disk gets 401 within it (the watch looks every second).
RELOADED_WITHIN = 6.0
#: Waits on something that does happen (a worker starting, a log line) on a loaded machine.
DEADLINE = 60.0
WORKER_REQUESTS = 12
GATED = "standin/gated:4"


def keys_command(keys: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``minato keys ARGS --file KEYS``, as an operator runs it beside the server."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "minato", "keys", *args, "--file", str(keys)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def new_key(keys: Path, name: str, *options: str) -> str:
    done = keys_command(keys, "add", name, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def generate(server: MinatoServer, key: str) -> int:
    with httpx.Client(timeout=30) as client:  # a connection of its own: any worker may answer
        return client.get(f"{server.url}/{MODEL}", params={"message": "hi"}, headers={"X-API-Key": key}).status_code


def events(server: MinatoServer, name: str) -> list[dict[str, object]]:
    """The log's ``name`` events. Workers share the log file, and a line is written as the event then
    its newline: two workers' events may share a line, so each line is read object by object."""
    decoder = json.JSONDecoder()
    found = []
    for line in server.log_lines():
        at = line.find("{")
        while at != -1:
            try:
                event, end = decoder.raw_decode(line, at)
            except json.JSONDecodeError:  # not an event (a traceback's text): look further on
                at = line.find("{", at + 1)
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
            at = line.find("{", end)
    return found


def becomes(server: MinatoServer, key: str, status: int, within: float = RELOADED_WITHIN) -> int:
    return eventually(lambda: generate(server, key), lambda got: got == status, f"the key's {status}", within, 0.1)


@pytest.fixture
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys-reload") / "keys.toml"


def test_the_keys_cli_against_a_running_minato(standin_url: str, keys: Path) -> None:
    ops = new_key(keys, "ops", "--role", "admin")
    alice = new_key(keys, "alice", "--models", "llama3.2*")
    server = start_minato(standin_url, keys.with_name("minato.log"), keys_file=str(keys))
    try:
        assert generate(server, alice) == 200

        assert keys_command(keys, "revoke", "alice").returncode == 0
        becomes(server, alice, 401)

        bob = new_key(keys, "bob", "--requests-per-minute", "100")
        becomes(server, bob, 200)

        keys.write_text("[keys.ops\nkey = ")  # an editor's half-saved file
        eventually(lambda: events(server, "keys_reload_refused"), bool, "the broken file refused", DEADLINE)
        still = generate(server, ops), generate(server, bob), generate(server, alice)
        with httpx.Client(timeout=30) as client:
            listed = client.get(f"{server.url}/keys", headers={"X-API-Key": ops}).json()
            as_user = client.get(f"{server.url}/keys", headers={"X-API-Key": bob}).status_code
    finally:
        stop_minato(server)

    assert still == (200, 200, 401), "the keys in force stayed as they were"
    assert [key["name"] for key in listed] == ["ops", "bob"]
    assert listed[1]["requests_per_minute"] == 100
    assert as_user == 403
    [refused] = events(server, "keys_reload_refused")
    assert refused["level"] == "warning"
    assert "not valid TOML" in str(refused["reason"])
    reloaded = events(server, "keys_reloaded")
    assert [(event["removed_names"], event["added_names"]) for event in reloaded] == [(["alice"], []), ([], ["bob"])]
    log = "\n".join(server.log_lines())
    assert not any(key in log for key in (ops, alice, bob)), "a key was logged"


def edit_unseen(path: Path, old: str, new: str) -> None:
    """Change ``path`` in place, to the same size and modification time: the watch cannot see it,
    so only a ``SIGHUP`` puts it in force."""
    seen = path.stat()
    text = path.read_text()
    assert len(old) == len(new)
    assert old in text
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(seen.st_atime_ns, seen.st_mtime_ns))


def stream_in_background(server: MinatoServer, key: str) -> tuple[threading.Event, list[object], threading.Thread]:
    """A gated stream: the event is set at its first token; the list gets its status and body, or how it failed."""
    first = threading.Event()
    ended: list[object] = []

    def read() -> None:
        try:
            with (
                httpx.Client(timeout=DEADLINE, headers={"X-API-Key": key}) as client,
                client.stream("GET", f"{server.url}/stream/{GATED}", params={"message": "hi"}) as response,
            ):
                body = b""
                for chunk in response.iter_raw():
                    first.set()
                    body += chunk
                ended.extend([response.status_code, body])
        except httpx.HTTPError as exc:
            ended.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return first, ended, thread


def test_every_worker_follows_sighup_at_once_and_the_file_by_itself_without_a_restart(
    standin_factory: Callable[..., StandInProcess], keys: Path
) -> None:
    standin = standin_factory()
    ops = new_key(keys, "ops", "--role", "admin")
    carol = new_key(keys, "carol")
    settings = {"keys_file": str(keys), "workers": "2", "open_probes": "true"}
    server = start_minato(standin.url, keys.with_name("minato.log"), **settings)
    try:
        eventually(
            lambda: len(events(server, "Application startup complete.")),
            lambda started: started == 2,
            "both workers started",
            DEADLINE,
        )
        httpx.post(f"{standin.url}/_standin/gate", json={"tokens": 1}, timeout=30).raise_for_status()
        first, ended, reader = stream_in_background(server, carol)
        assert first.wait(DEADLINE), "the stream never started"
        # Revoke carol (the last hex digit of its digest changes) in a way only SIGHUP shows.
        old = hashlib.sha256(carol.encode()).hexdigest()
        new = old[:-1] + ("0" if old[-1] != "0" else "1")
        edit_unseen(keys, old, new)

        os.kill(server.process.pid, signal.SIGHUP)  # the supervisor's pid, as systemd's reload sends it

        eventually(
            lambda: [event for event in events(server, "keys_reloaded") if event["why"] == "SIGHUP"],
            lambda reloaded: len(reloaded) == 2,
            "both workers reloaded",
            DEADLINE,
        )
        refused, both = answers_from_both_workers(
            server, lambda: generate(server, carol), "/{model_name}", WORKER_REQUESTS
        )
        admin = generate(server, ops)
        httpx.post(f"{standin.url}/_standin/gate", json={"tokens": 4}, timeout=30).raise_for_status()
        reader.join(DEADLINE)

        dave = new_key(keys, "dave")  # and each worker sees the change on disk by itself
        eventually(
            lambda: [event for event in events(server, "keys_reloaded") if event["added_names"] == ["dave"]],
            lambda reloaded: len(reloaded) == 2,
            "both workers read the new key",
            DEADLINE,
        )
        added = [generate(server, dave) for _ in range(WORKER_REQUESTS)]
    finally:
        stop_minato(server)

    assert set(refused) == {401}
    assert added == [200] * WORKER_REQUESTS
    assert both, "one worker answered every request: the test shows nothing about the other"
    assert admin == 200
    assert len(ended) == 2, f"the stream in flight was cut: {ended}"
    assert ended[0] == 200
    assert isinstance(ended[1], bytes)
    assert len(ended[1].split()) == 4, "the stream in flight ran to its end: its four tokens"
    assert "\n".join(server.log_lines()).count("Started server process") == 2, "a worker was restarted"
    [passed] = events(server, "sighup_passed_on")
    assert passed["workers"] == 2
    assert not events(server, "keys_reload_refused")
