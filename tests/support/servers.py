"""End-to-end fixtures: Minato as a real server process in front of the Ollama stand-in.

Every test that takes ``backend`` runs against the stand-in, and also against a real Ollama when
``MINATO_LIVE_OLLAMA_URL`` points at one (those runs carry the ``live`` marker). Tests that need
the stand-in's scripted models or its request log take ``standin`` and are skipped live.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.standin.process import StandInProcess, run_standin

REPO = Path(__file__).resolve().parents[2]
LIVE_URL_VARIABLE = "MINATO_LIVE_OLLAMA_URL"


@dataclass(frozen=True)
class Backend:
    """The Ollama Minato is pointed at, and which models to use on it."""

    kind: str
    ollama_url: str
    model: str
    vision_model: str | None


@dataclass
class MinatoServer:
    """A running Minato process."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log_lines(self) -> list[str]:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace").splitlines()


def free_port() -> int:
    """Return a TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_minato(ollama_url: str, log_path: Path, **settings: str) -> MinatoServer:
    """Start ``python -m minato serve`` with ``MINATO_<SETTING>`` variables and wait until ``/health`` answers."""
    return launch_minato(ollama_url, log_path, settings)


def launch_minato(
    ollama_url: str,
    log_path: Path,
    settings: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    new_session: bool = False,
) -> MinatoServer:
    """Start ``python -m minato serve`` and wait until ``/health`` answers.

    It runs in ``log_path``'s directory, not the repository, so a developer's ``./.env`` (which
    ``minato serve`` reads) never reaches the tests; ``args`` go after ``serve``. ``new_session``
    makes it the leader of a process group of its own, for signals sent to it and its workers at
    once, as a terminal's Ctrl-C is.
    """
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MINATO_", "OLLAMA_"))}
    env.update(
        {
            "MINATO_OLLAMA_URL": ollama_url,
            "MINATO_LOG_FORMAT": "json",
            "MINATO_SESSION_STORE": str(log_path.with_suffix(".db")),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"MINATO_{key.upper()}": value for key, value in settings.items()})
    log = log_path.open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "minato", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=log_path.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # generous: a loaded 2-core machine starts Python slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"minato exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return MinatoServer(url=url, log_path=log_path, process=process)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"minato did not become healthy:\n{log_path.read_text()}")


def stop_minato(server: MinatoServer) -> None:
    """Stop the process the way a container runtime does: SIGTERM, then SIGKILL."""
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def standin_url() -> Iterator[str]:
    """The Ollama stand-in, running as its own process for the whole session."""
    with run_standin() as url:
        yield url


@pytest.fixture
def standin_factory() -> Iterator[Callable[..., StandInProcess]]:
    """Start stand-ins for one test: ``standin_factory("--models", "llama3.2", "--loaded", "llama3.2")``.

    Each call starts one more on its own port and returns it (``.url``; ``.stop()`` or ``.kill()``
    to take that backend down mid-test); all still running are stopped when the test ends.
    """
    started: list[StandInProcess] = []

    def start(*args: str) -> StandInProcess:
        standin = StandInProcess(*args)
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()


@pytest.fixture(
    scope="session",
    params=[pytest.param("standin", id="standin"), pytest.param("live", id="live", marks=pytest.mark.live)],
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each Ollama the end-to-end tests run against."""
    if request.param == "live":
        url = os.environ.get(LIVE_URL_VARIABLE)
        if not url:
            pytest.skip(f"set {LIVE_URL_VARIABLE} to run against a real Ollama")
        return Backend(
            kind="live",
            ollama_url=url,
            model=os.environ.get("MINATO_LIVE_MODEL", "llama3.2:1b"),
            vision_model=os.environ.get("MINATO_LIVE_VISION_MODEL"),
        )
    return Backend(
        kind="standin",
        ollama_url=request.getfixturevalue("standin_url"),
        model="llama3.2:1b",
        vision_model="llava:7b",
    )


@pytest.fixture(scope="session")
def minato(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato in front of ``backend``."""
    server = start_minato(backend.ollama_url, tmp_path_factory.mktemp("minato") / f"{backend.kind}.log")
    yield server
    stop_minato(server)


@pytest.fixture
def standin(backend: Backend) -> Iterator[httpx.Client]:
    """A client for the stand-in's own introspection routes; skips the test against a real Ollama.

    The request and event logs are cleared first so a test only sees its own traffic.
    """
    if backend.kind != "standin":
        pytest.skip("needs the stand-in's scripted models and request log")
    with httpx.Client(base_url=backend.ollama_url, timeout=10) as client:
        client.delete("/_standin/requests")
        client.delete("/_standin/events")
        yield client


@pytest.fixture
def http(minato: MinatoServer) -> Iterator[httpx.Client]:
    """A plain HTTP client for Minato."""
    with httpx.Client(base_url=minato.url, timeout=30) as client:
        yield client


def answers_from_both_workers(
    server: MinatoServer, send: Callable[[], int], route: str, batch: int, batches: int = 5
) -> tuple[list[int], bool]:
    """Send ``batch`` requests at a time (each on a connection of its own, by ``send``, which returns the
    status) until each of the two workers answered some of them, ``batches`` at most: the statuses, and
    whether both did. Which worker accepts a connection is the kernel's choice, and on a busy machine
    one may take a whole batch; a bounded number of batches makes both answering all but certain."""
    statuses: list[int] = []
    for _ in range(batches):
        statuses += [send() for _ in range(batch)]
        if both_workers_answered(server, route, len(statuses)):
            return statuses, True
    return statuses, False


def both_workers_answered(server: MinatoServer, route: str, total: int) -> bool:
    """Whether each worker answered some of ``route``'s ``total`` requests: one of them (its own
    ``/metrics``, on a connection of its own) counts more than none and less than all."""
    for _ in range(40):
        with httpx.Client(timeout=10) as client:
            text = client.get(f"{server.url}/metrics").text
        counted = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "minato_requests_total" and sample.labels["route"] == route
        )
        if 0 < counted < total:
            return True
    return False
