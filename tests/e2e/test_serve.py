"""``minato serve`` as a real process: the ``.env`` it reads, its start-up line, and a second Ctrl-C.

Each Minato runs in a directory of its own (``start_minato`` runs it in its log's directory), so a
``.env`` written there is the one it finds, and the repository's is never read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import MinatoServer, answers_from_both_workers, launch_minato, start_minato, stop_minato

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:1b"
FILE_KEY = "key-from-the-dotenv-file"
ENV_KEY = "key-from-the-real-environment"
LONG_STREAM = "/stream/standin/paced:1000x100"
"""A thousand tokens 100 ms apart: still running when Minato is told to stop."""
DEADLINE = 60.0
EXIT_DEADLINE = 60.0
WORKER_REQUESTS = 12
GRACE = "600"
"""Longer than any deadline here: a stream ends before it only if it is cut."""


def events(server: MinatoServer, name: str) -> list[dict[str, object]]:
    found = []
    for line in server.log_lines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def wait_for_lines(server: MinatoServer, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + DEADLINE
    while sum(text in line for line in server.log_lines()) < count:
        assert time.monotonic() < deadline, f"{count} x {text!r} never logged:\n" + "\n".join(server.log_lines())
        time.sleep(0.05)


def generate(server: MinatoServer, key: str | None = None) -> int:
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(timeout=30) as client:
        return client.get(f"{server.url}/{MODEL}", params={"message": "hi"}, headers=headers).status_code


@pytest.fixture
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


def exit_of(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``minato serve`` in ``directory`` with a clean environment, expecting it to refuse to start."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MINATO_", "OLLAMA_"))}
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "minato", "serve", "--port", "0", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


# --------------------------------------------------------------------------- .env


def test_the_keys_in_a_dotenv_are_in_force(standin_url: str, directory: Path) -> None:
    (directory / ".env").write_text(
        f"# copied from .env.example\nMINATO_API_KEYS={FILE_KEY}\n"
        "MINATO_PUBLISH_ADDRESS=127.0.0.1\nOLLAMA_KEEP_ALIVE=5m\nLB_PUBLISH_PORT=8080\n"
    )
    server = start_minato(standin_url, directory / "minato.log")
    try:
        without, wrong, right = generate(server), generate(server, "not-the-key"), generate(server, FILE_KEY)
    finally:
        stop_minato(server)

    assert (without, wrong, right) == (401, 401, 200)
    [read] = events(server, "env_file_read")
    assert read["path"] == str(directory.resolve() / ".env")
    assert (read["settings"], read["applied"], read["overridden_by_environment"]) == (1, ["MINATO_API_KEYS"], [])
    assert read["not_minatos"] == ["MINATO_PUBLISH_ADDRESS", "OLLAMA_KEEP_ALIVE", "LB_PUBLISH_PORT"]
    [starting] = events(server, "starting")
    assert (starting["auth"], starting["env_file"]) == ("1 key", read["path"])
    assert not any(FILE_KEY in line for line in server.log_lines()), "a key was logged"


def test_every_worker_has_the_dotenvs_settings(standin_url: str, directory: Path) -> None:
    """Workers are processes of their own that read the environment they inherit."""
    (directory / ".env").write_text(f"MINATO_API_KEYS={FILE_KEY}\nMINATO_WORKERS=2\nMINATO_OPEN_PROBES=true\n")
    server = start_minato(standin_url, directory / "minato.log")
    try:
        wait_for_lines(server, '"Application startup complete."', 2)
        refused, both = answers_from_both_workers(server, lambda: generate(server), "/{model_name}", WORKER_REQUESTS)
        served = generate(server, FILE_KEY)
    finally:
        stop_minato(server)

    assert set(refused) == {401}
    assert both, "one worker answered every request: the test shows nothing about the other"
    assert served == 200
    assert events(server, "starting")[0]["workers"] == 2


def test_the_real_environment_wins_over_the_dotenv(standin_url: str, directory: Path) -> None:
    (directory / ".env").write_text(f"MINATO_API_KEYS={FILE_KEY}\n")
    server = start_minato(standin_url, directory / "minato.log", api_keys=ENV_KEY)
    try:
        statuses = generate(server, FILE_KEY), generate(server, ENV_KEY)
    finally:
        stop_minato(server)

    assert statuses == (401, 200)
    [read] = events(server, "env_file_read")
    assert (read["applied"], read["overridden_by_environment"]) == ([], ["MINATO_API_KEYS"])
    assert not any(FILE_KEY in line or ENV_KEY in line for line in server.log_lines()), "a key was logged"


def test_env_file_names_the_file_instead_of_the_dotenv(standin_url: str, directory: Path) -> None:
    (directory / ".env").write_text(f"MINATO_API_KEYS={FILE_KEY}\n")
    elsewhere = directory / "conf" / "minato.env"
    elsewhere.parent.mkdir()
    elsewhere.write_text(f'MINATO_API_KEYS="{ENV_KEY}"  # quoted, with a comment\n')
    server = launch_minato(standin_url, directory / "minato.log", {}, args=["--env-file", str(elsewhere)])
    try:
        statuses = generate(server, FILE_KEY), generate(server, ENV_KEY)
    finally:
        stop_minato(server)

    assert statuses == (401, 200)
    assert events(server, "env_file_read")[0]["path"] == str(elsewhere)


def test_a_misspelt_setting_in_the_dotenv_stops_minato_naming_file_and_line(directory: Path) -> None:
    (directory / ".env").write_text(f"# keys\n\nMINATO_API_KEY={FILE_KEY}\n")

    result = exit_of(directory)

    assert result.returncode == 2
    path = directory.resolve() / ".env"
    assert f"{path} line 3: MINATO_API_KEY is not a Minato setting (did you mean MINATO_API_KEYS?)" in result.stderr
    assert FILE_KEY not in result.stderr + result.stdout


def test_an_invalid_value_in_the_dotenv_is_refused_naming_where_it_came_from(directory: Path) -> None:
    (directory / ".env").write_text("MINATO_LOG_LEVEL=info\nMINATO_PORT=eighty\n")

    result = exit_of(directory)

    assert result.returncode == 2
    assert "MINATO_PORT: " in result.stderr
    assert f"(from {directory.resolve() / '.env'} line 2)" in result.stderr


def test_an_env_file_that_does_not_exist_stops_minato(directory: Path) -> None:
    result = exit_of(directory, "--env-file", "missing.env")

    assert result.returncode == 2
    assert "cannot read the env file missing.env: No such file or directory" in result.stderr


# --------------------------------------------------------------------------- the start-up line


@pytest.mark.parametrize("workers", [1, 2])
def test_one_start_up_line_says_where_and_with_what_minato_serves(
    standin_url: str, directory: Path, workers: int
) -> None:
    keys = directory / "keys.toml"
    keys.write_text(f'[keys.alice]\nkey = "{FILE_KEY}"\n\n[keys.bob]\nkey = "{ENV_KEY}"\nrole = "admin"\n')
    server = start_minato(standin_url, directory / "minato.log", workers=str(workers), keys_file=str(keys))
    try:
        wait_for_lines(server, '"Application startup complete."', workers)
    finally:
        stop_minato(server)

    [starting] = events(server, "starting")
    assert starting["listen"] == server.url
    assert starting["ollama"] == [standin_url]
    assert starting["auth"] == f"keys file {keys} (2 keys)"
    assert starting["state"] == f"sqlite {directory.resolve() / 'minato.db'}"
    assert starting["workers"] == workers
    assert starting["env_file"] is None
    assert any(f"Uvicorn running on {server.url}" in line for line in server.log_lines()), "no listening line"
    assert not any(FILE_KEY in line or ENV_KEY in line for line in server.log_lines()), "a key was logged"


# --------------------------------------------------------------------------- Ctrl-C twice


def _stream_in_background(server: MinatoServer) -> tuple[threading.Event, list[BaseException], threading.Thread]:
    """Open a long stream; the event is set once its first token arrived, the list gets how it ended."""
    first = threading.Event()
    ended: list[BaseException] = []

    def read() -> None:
        try:
            with (
                httpx.Client(timeout=DEADLINE) as client,
                client.stream("GET", f"{server.url}{LONG_STREAM}", params={"message": "hi"}) as response,
            ):
                for _ in response.iter_raw():
                    first.set()
        except httpx.HTTPError as exc:
            ended.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert first.wait(DEADLINE), "the stream never started"
    return first, ended, thread


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_ctrl_c_cuts_the_streams_and_exits_without_a_traceback(
    standin_url: str, directory: Path, workers: int
) -> None:
    settings = {"workers": str(workers), "shutdown_grace": GRACE}
    server = launch_minato(standin_url, directory / "minato.log", settings, new_session=True)
    wait_for_lines(server, '"Application startup complete."', workers)
    _, ended, reader = _stream_in_background(server)

    # A terminal's Ctrl-C reaches every process of the group: the supervisor and its workers.
    os.killpg(server.process.pid, signal.SIGINT)
    wait_for_lines(server, '"Shutting down"', workers)
    os.killpg(server.process.pid, signal.SIGINT)
    try:
        server.process.wait(timeout=EXIT_DEADLINE)
    finally:
        stop_minato(server)
    reader.join(DEADLINE)

    assert len(ended) == 1, "the stream was cut, not ended as complete"
    lines = server.log_lines()
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert [event for event in logged if event["level"] in {"error", "critical"}] == []
    assert any(event["event"] == "shutdown_cut_requests" and event["requests"] == 1 for event in logged)
    assert sum(event["event"] == "Application shutdown complete." for event in logged) == workers
    [stream] = [event for event in logged if event["event"] == "request" and event["route"] == "/stream/{model_name}"]
    assert stream["outcome"] == "aborted"
