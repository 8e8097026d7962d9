"""Backpressure and graceful shutdown with Minato as a real process."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.support.servers import Backend, start_minato, stop_minato

pytestmark = pytest.mark.e2e


def test_a_generation_beyond_capacity_is_a_503_with_retry_after(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_minato(
        backend.ollama_url, tmp_path_factory.mktemp("full") / "minato.log", max_generations="1", max_queue="0"
    )
    try:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", f"{server.url}/stream/standin/slow", params={"message": "hi"}) as first,
        ):
            chunks = first.iter_raw()
            next(chunks)
            refused = client.get(f"{server.url}/llama3.2:1b", params={"message": "hi"})
            rest = b"".join(chunks)
        after = httpx.get(f"{server.url}/llama3.2:1b", params={"message": "hi"}, timeout=10)
    finally:
        stop_minato(server)

    assert refused.status_code == 503
    assert refused.headers["retry-after"].isdigit()
    assert "waiting" in refused.json()["detail"]
    assert rest, "the running stream was not disturbed"
    assert after.status_code == 200, "the slot came back when the stream ended"


def test_sigterm_lets_a_running_stream_finish_then_exits(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_minato(backend.ollama_url, tmp_path_factory.mktemp("drain") / "minato.log", shutdown_grace="10")
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{server.url}/stream/standin/paced:10x100", params={"message": "hi"}) as response,
    ):
        chunks = response.iter_raw()
        first = next(chunks)
        server.process.send_signal(signal.SIGTERM)
        text = (first + b"".join(chunks)).decode()
    exit_code = server.process.wait(timeout=15)

    assert len(text.split()) == 10, "the stream in flight was allowed to finish"
    # uvicorn re-raises the signal once it has shut down, so supervisors see a SIGTERM exit.
    assert exit_code in (0, -signal.SIGTERM)
    assert any("Application shutdown complete" in line for line in server.log_lines())


def test_sigterm_closes_streams_still_running_after_the_grace_period(
    standin: httpx.Client, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_minato(backend.ollama_url, tmp_path_factory.mktemp("cut") / "minato.log", shutdown_grace="1")
    started = time.monotonic()
    received = bytearray()

    def read_until_cut() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", f"{server.url}/stream/standin/paced:100x100", params={"message": "hi"}) as r,
        ):
            chunks = r.iter_raw()
            received.extend(next(chunks))
            server.process.send_signal(signal.SIGTERM)
            for chunk in chunks:
                received.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        read_until_cut()
    server.process.wait(timeout=15)

    assert time.monotonic() - started < 6, "the stream was cut after the grace period, not run to its end"
    assert len(received.split()) < 100
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and standin.get("/_standin/active").json()["streams"]:
        time.sleep(0.05)
    assert standin.get("/_standin/active").json()["streams"] == 0, "the call to Ollama was closed too"
