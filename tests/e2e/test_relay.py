"""The relay engine end to end: each chunk written to the client's socket from Ollama's data callback.

A served Minato relays through its server's lane (:mod:`minato.web.lane`); these tests hold what that
path must keep, on Minato's own route and on the native and OpenAI doors, against a stand-in of their
own (its gate is theirs to open): the first token is never held back, a client that leaves stops
Ollama at once, a client that stops reading stops Ollama's socket (and Minato's memory stays flat),
failures end each dialect as it ends, and a request is logged, counted and charged once.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final, NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import MinatoServer, start_minato, stop_minato
from tests.support.standin.process import StandInProcess

pytestmark = pytest.mark.e2e
#: A bound on waits for something that must happen: far above what it takes.
PATIENCE: Final = 30.0
GATED: Final = "standin/gated:6"
QUESTION: Final = [{"role": "user", "content": "why is the sky blue"}]


class Route(NamedTuple):
    """A streamed generation route, and what its first token looks like on the wire."""

    method: str
    path: str
    first_token: bytes
    ends_with: bytes
    """What the last frame of a complete answer contains."""

    def open(self, client: httpx.Client, model: str, **headers: str) -> AbstractContextManager[httpx.Response]:
        if self.method == "GET":
            headers = {"accept": "application/x-ndjson"} | headers
            return client.stream("GET", self.path.format(model=model), params={"message": "hi"}, headers=headers)
        body: dict[str, Any] = {"model": model, "messages": QUESTION, "stream": True}
        return client.stream("POST", self.path, json=body, headers=headers)


ROUTES: Final = {
    "stream": Route("GET", "/stream/{model}", b'"token":"The"', b'"stats"'),
    "native": Route("POST", "/api/chat", b'"content":"The"', b'"done":true'),
    "openai": Route("POST", "/v1/chat/completions", b'"content":"The"', b"data: [DONE]"),
}


class Served(NamedTuple):
    standin: StandInProcess
    minato: MinatoServer
    control: httpx.Client
    """The stand-in's own routes."""

    def gate(self, tokens: int) -> None:
        self.control.post("/_standin/gate", json={"tokens": tokens}).raise_for_status()

    def streams(self) -> list[dict[str, Any]]:
        """The streams the stand-in is writing now."""
        live: list[dict[str, Any]] = self.control.get("/_standin/streams").json()
        return live

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.control.get("/_standin/events").json() if event["type"] == kind]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Minato in front of a stand-in of this module's own."""
    standin = StandInProcess()
    try:
        # One generation at a time: a relay that kept its slot would leave the next test waiting, refused.
        minato = start_minato(
            standin.url, tmp_path_factory.mktemp("relay") / "minato.log", max_generations="1", queue_timeout="10"
        )
        try:
            with httpx.Client(base_url=standin.url, timeout=10) as control:
                yield Served(standin, minato, control)
        finally:
            stop_minato(minato)
    finally:
        standin.stop()


@pytest.fixture
def relay(served: Served) -> Iterator[Served]:
    """The module's stand-in with its gate shut and its records cleared."""
    served.gate(0)
    served.control.delete("/_standin/events")
    served.control.delete("/_standin/requests")
    yield served
    served.gate(0)


def until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``check()`` holds."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, f"never happened within {PATIENCE} s: {what}"
        time.sleep(0.02)


def read_until(chunks: Iterator[bytes], marker: bytes) -> bytes:
    """Read ``chunks`` until what came holds ``marker``."""
    got = b""
    while marker not in got:
        got += next(chunks)
    return got


# -- the first token, and a client leaving ------------------------------------------------------


@pytest.mark.parametrize("name", ROUTES)
def test_the_first_token_reaches_the_client_while_ollama_still_holds_the_rest(relay: Served, name: str) -> None:
    route = ROUTES[name]
    relay.gate(1)
    with httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client, route.open(client, GATED) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        read_until(chunks, route.first_token)
        # Ollama has written one token and is held at its gate: the token came through at once.
        assert [stream["tokens_sent"] for stream in relay.streams()] == [1]
        relay.gate(6)
        rest = b"".join(chunks)
    assert route.ends_with in rest


@pytest.mark.parametrize("name", ROUTES)
def test_a_client_that_leaves_closes_ollamas_connection_at_once(relay: Served, name: str) -> None:
    route = ROUTES[name]
    relay.gate(1)
    request_id = f"leaves-{name}-{time.monotonic_ns()}"
    with (
        httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client,
        route.open(client, GATED, **{"x-request-id": request_id}) as response,
    ):
        read_until(response.iter_raw(), route.first_token)

    # The gate stays shut: Ollama's stream can only end because Minato closed its connection.
    until(lambda: bool(relay.events("stream_cancelled")), "the stand-in saw its connection closed")
    assert relay.streams() == []
    assert not relay.events("stream_completed")
    lines = _log_lines(relay.minato, request_id)
    # Counted (and charged) as relayed: the one token that passed.
    assert [(line["status"], line["outcome"], line["tokens"]) for line in lines] == [(499, "aborted", 1)]


def _log_lines(minato: MinatoServer, request_id: str) -> list[dict[str, Any]]:
    """The request log's lines for ``request_id`` (once the one it must write is there)."""

    def lines() -> list[dict[str, Any]]:
        found = []
        for text in minato.log_lines():
            if request_id in text and '"event":"request"' in text:
                found.append(json.loads(text))
        return found

    until(lambda: bool(lines()), f"the log line of {request_id}")
    return lines()


# -- flow control ----------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc")


@pytest.mark.parametrize("name", ["stream", "native"])
def test_a_client_that_stops_reading_stops_ollamas_socket_and_gets_everything_when_it_reads_again(
    relay: Served, name: str
) -> None:
    route = ROUTES[name]
    # About 40 MB of Ollama's NDJSON: more than the kernel's socket buffers on the way can hold.
    tokens = 300_000
    model = f"standin/tokens:{tokens}"
    before = _rss_kib(relay.minato.process.pid)
    received = bytearray()
    # A small receive buffer of a fixed size: the client's kernel does not take megabytes in its stead.
    small = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65_536)])
    with (
        httpx.Client(base_url=relay.minato.url, timeout=PATIENCE, transport=small) as client,
        route.open(client, model) as response,
    ):
        chunks = response.iter_raw(1024)
        received += read_until(chunks, route.first_token)

        # The client reads nothing more: Minato stops reading Ollama, whose writes then wait on a full socket.
        def ollama_blocked() -> bool:
            live = relay.streams()
            return bool(live) and live[0]["write_buffered"] > 0

        until(ollama_blocked, "the stand-in's socket filled up")
        held = relay.streams()[0]["tokens_sent"]
        assert held < tokens, "Ollama is stopped before the end of its answer"
        grown_kib = _rss_kib(relay.minato.process.pid) - before
        assert grown_kib < 8 * 1024, f"Minato buffered what its client did not read: {grown_kib} KiB"

        for chunk in chunks:
            received += chunk
    assert route.ends_with in received[-2000:]
    events = relay.events("stream_completed")
    assert [event["tokens_sent"] for event in events] == [tokens]


# -- server-sent events ------------------------------------------------------------------------


def test_sse_events_carry_ids_and_a_reconnect_with_one_gets_a_204(relay: Served) -> None:
    with httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client:
        response = client.get("/stream/standin/tokens:5", params={"message": "hi"}, headers=SSE)
        ids = re.findall(r"^id: (\S+)$", response.text, flags=re.MULTILINE)
        stream = ids[0].split("-")[0]
        assert ids == [f"{stream}-{n}" for n in range(1, 6)] + [f"{stream}-end"]
        assert re.fullmatch(r"[0-9a-f]{16}", stream)
        again = client.get(
            "/stream/standin/tokens:5", params={"message": "hi"}, headers={**SSE, "Last-Event-ID": ids[2]}
        )
    assert again.status_code == 204
    assert len(relay.events("stream_started")) == 1, "the reconnect did not ask Ollama again"


SSE: Final = {"Accept": "text/event-stream"}


# -- failures mid-stream ------------------------------------------------------------------------


def _last_frame(text: str, separator: str) -> str:
    return text.strip().split(separator)[-1]


def test_an_error_line_mid_stream_ends_every_format_and_door_with_its_error_frame(relay: Served) -> None:
    model = "standin/fail-midstream"
    with httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client:
        ndjson = client.get(f"/stream/{model}", params={"message": "hi"}, headers={"Accept": "application/x-ndjson"})
        sse = client.get(f"/stream/{model}", params={"message": "hi"}, headers=SSE)
        native = client.post("/api/chat", json={"model": model, "messages": QUESTION})
        openai = client.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, "stream": True})
        anthropic = client.post(
            "/v1/messages", json={"model": model, "messages": QUESTION, "max_tokens": 50, "stream": True}
        )

    assert "unexpected EOF" in json.loads(_last_frame(ndjson.text, "\n"))["error"]
    assert json.loads(ndjson.text.splitlines()[0]) == {"token": "The"}
    last_event = _last_frame(sse.text, "\n\n").splitlines()
    assert last_event[0].endswith("-end")
    assert last_event[1] == "event: error"
    assert "unexpected EOF" in json.loads(last_event[2].removeprefix("data: "))["error"]
    assert "unexpected EOF" in json.loads(_last_frame(native.text, "\n"))["error"]
    # Ollama's compatible writers end such a stream without their end marker: Minato adds the error frame.
    openai_error = json.loads(_last_frame(openai.text, "\n\n").removeprefix("data: "))
    assert openai_error["error"]["type"] == "api_error"
    anthropic_last = _last_frame(anthropic.text, "\n\n").splitlines()
    assert anthropic_last[0] == "event: error"
    assert json.loads(anthropic_last[1].removeprefix("data: "))["type"] == "error"


def test_a_plain_text_stream_cut_by_a_failure_gives_back_its_slot(relay: Served) -> None:
    received = bytearray()
    with httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client:

        def read_everything() -> None:
            with client.stream("GET", "/stream/standin/fail-midstream", params={"message": "hi"}) as response:
                for chunk in response.iter_raw():
                    received.extend(chunk)

        with pytest.raises(httpx.RemoteProtocolError):
            read_everything()
        assert received.startswith(b"The"), "the tokens before the failure were relayed"
        after = client.get("/stream/standin/tokens:3", params={"message": "hi"})  # the one slot is free again
    assert after.status_code == 200
    assert after.text == "The sky is"


def test_a_stream_ollama_cuts_ends_with_the_error_frame_on_every_route(
    standin_factory: Callable[..., StandInProcess], tmp_path: Path
) -> None:
    standin = standin_factory()
    minato = start_minato(standin.url, tmp_path / "minato.log")
    try:
        httpx.post(f"{standin.url}/_standin/gate", json={"tokens": 1}, timeout=10).raise_for_status()
        with httpx.Client(base_url=minato.url, timeout=PATIENCE) as client:
            opened = [
                ROUTES["stream"].open(client, GATED),
                ROUTES["native"].open(client, GATED),
                ROUTES["openai"].open(client, GATED),
            ]
            responses = [stream.__enter__() for stream in opened]
            try:
                readers = [response.iter_raw() for response in responses]
                for reader, marker in zip(
                    readers, (b'"token":"The"', b'"content":"The"', b'"content":"The"'), strict=True
                ):
                    read_until(reader, marker)
                standin.kill()  # Ollama's connections break mid-answer
                rests = [b"".join(reader).decode() for reader in readers]
            finally:
                for stream in opened:
                    stream.__exit__(None, None, None)
    finally:
        stop_minato(minato)

    ndjson, native, openai = rests
    assert "broke off" in json.loads(_last_frame(ndjson, "\n"))["error"]
    assert "broke off" in json.loads(_last_frame(native, "\n"))["error"]
    assert "broke off" in json.loads(_last_frame(openai, "\n\n").removeprefix("data: "))["error"]["message"]


# -- once per request: the session's turn, the log line, the metrics, the charge ------------------


def test_a_turn_is_committed_once_even_when_the_client_leaves_right_after_done(relay: Served) -> None:
    session = f"relay-{time.monotonic_ns()}"
    with httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client:
        with client.stream(
            "GET", "/stream/standin/tokens:4", params={"message": "first", "session": session}, headers=SSE
        ) as response:
            read_until(response.iter_raw(), b"event: done")
        # The client hung up the moment it had its done event; the next turn must still see the first.
        follow = client.get("/stream/standin/tokens:2", params={"message": "second", "session": session})
        assert follow.status_code == 200
        messages = client.get(f"/chat/{session}").json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "first"),
        ("assistant", "The sky is blue"),
        ("user", "second"),
        ("assistant", "The sky"),
    ]
    sent = [r["body"]["messages"] for r in relay.control.get("/_standin/requests").json() if r["path"] == "/api/chat"]
    assert [m["content"] for m in sent[-1]] == ["first", "The sky is blue", "second"]


def _requests_total(client: httpx.Client, route: str) -> float:
    text = client.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "minato_requests_total" and sample.labels["route"] == route
    )


@pytest.mark.parametrize("name", ROUTES)
def test_a_streamed_request_is_logged_and_counted_once(relay: Served, name: str) -> None:
    route = ROUTES[name]
    template = {"stream": "/stream/{model_name}", "native": "/api/chat", "openai": "/v1/chat/completions"}[name]
    request_id = f"once-{name}-{time.monotonic_ns()}"
    with httpx.Client(base_url=relay.minato.url, timeout=PATIENCE) as client:
        counted = _requests_total(client, template)
        with route.open(client, "standin/tokens:5", **{"x-request-id": request_id}) as response:
            body = response.read()
        assert route.ends_with in body
        lines = _log_lines(relay.minato, request_id)
        assert [(line["status"], line["outcome"], line["tokens"]) for line in lines] == [(200, "ok", 5)]
        assert _requests_total(client, template) == counted + 1
