"""Long request targets against Minato as a real process: ``MINATO_MAX_QUERY_CHARS`` is the limit a client
meets, whatever its size, and every refusal is Minato's JSON 414 with a request id, logged.

The HTTP parser's own URL limit (65,535 bytes for path, ``?`` and query together) used to answer first,
with a plain-text 400 and no request id, so the documented 414 was unreachable at the default setting.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.servers import MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e

MODEL_PATH = "/llama3.2:1b"
DEFAULT_MAX = 65_536
RAISED_MAX = 150_000
LOG_DEADLINE = 10.0


def query_of(length: int) -> str:
    """A query string of exactly ``length`` bytes that the route accepts: one long message."""
    return "message=" + "a" * (length - len("message="))


@pytest.fixture(scope="module")
def minato_default(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """The default query limit; messages as long as the query may carry, so only the query limit bites."""
    directory = tmp_path_factory.mktemp("target")
    server = start_minato(standin_url, directory / "minato.log", max_message_chars=str(RAISED_MAX))
    yield server
    stop_minato(server)


@pytest.fixture(scope="module")
def minato_raised(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """A query limit above the 64 KiB the HTTP parser's URL offsets can address."""
    directory = tmp_path_factory.mktemp("raised")
    server = start_minato(
        standin_url,
        directory / "minato.log",
        max_query_chars=str(RAISED_MAX),
        max_message_chars=str(RAISED_MAX),
    )
    yield server
    stop_minato(server)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def get(server: MinatoServer, target: str, request_id: str | None = None) -> Answer:
    """``GET target`` on a connection of its own, over a raw socket: HTTP clients refuse URLs this long."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    head = f"GET {target} HTTP/1.1\r\nhost: minato\r\nconnection: close\r\n"
    if request_id is not None:
        head += f"x-request-id: {request_id}\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"{head}\r\n".encode())
        stream = sock.makefile("rb")
        status = int(stream.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := stream.readline()) not in {b"\r\n", b""}:
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = stream.read(int(headers["content-length"]))
    return Answer(status, headers, body)


def logged_request(server: MinatoServer, request_id: str) -> dict[str, object]:
    """The request line logged for ``request_id`` (written once the answer has been sent)."""
    deadline = time.monotonic() + LOG_DEADLINE
    while time.monotonic() < deadline:
        for line in server.log_lines():
            if request_id in line:
                event = json.loads(line)
                if event.get("event") == "request" and event.get("request_id") == request_id:
                    return dict(event)
        time.sleep(0.05)
    raise AssertionError(f"no request line for {request_id}")


def assert_refused_414(server: MinatoServer, response: Answer, request_id: str, detail: str) -> None:
    assert response.status == 414, response.body[:200]
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}
    assert response.headers["x-request-id"] == request_id
    line = logged_request(server, request_id)
    assert (line["status"], line["method"]) == (414, "GET"), line
    assert "outcome" in line, line  # its word for a refusal is the request log's to choose


def test_a_query_of_exactly_the_default_limit_is_served(minato_default: MinatoServer) -> None:
    """65,536 bytes of query: a request target over the parser's 65,535-byte URL limit, yet within Minato's."""
    response = get(minato_default, f"{MODEL_PATH}?{query_of(DEFAULT_MAX)}", "at-the-limit")

    assert response.status == 200, response.body[:200]
    answer = response.json()
    assert isinstance(answer, dict)
    assert (answer["model"], answer["done_reason"]) == ("llama3.2:1b", "stop")
    assert response.headers["x-request-id"] == "at-the-limit"
    assert logged_request(minato_default, "at-the-limit")["status"] == 200


def test_one_byte_over_the_default_limit_is_minatos_json_414(minato_default: MinatoServer) -> None:
    response = get(minato_default, f"{MODEL_PATH}?{query_of(DEFAULT_MAX + 1)}", "one-byte-over")

    detail = f"the query string is longer than {DEFAULT_MAX} bytes"
    assert_refused_414(minato_default, response, "one-byte-over", detail)


def test_a_200_kb_query_is_minatos_json_414(minato_default: MinatoServer) -> None:
    response = get(minato_default, f"{MODEL_PATH}?{query_of(200_000)}", "huge-query")

    assert_refused_414(minato_default, response, "huge-query", f"the query string is longer than {DEFAULT_MAX} bytes")


def test_a_request_id_is_made_up_when_the_client_sends_none(minato_default: MinatoServer) -> None:
    response = get(minato_default, f"{MODEL_PATH}?{query_of(200_000)}")

    assert response.status == 414
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    assert logged_request(minato_default, request_id)["status"] == 414


def test_a_path_longer_than_8_kib_is_minatos_json_414(minato_default: MinatoServer) -> None:
    response = get(minato_default, "/" + "m" * 100_000, "long-path")

    assert_refused_414(minato_default, response, "long-path", "the request path is longer than 8192 bytes")


def test_a_raised_limit_above_64_kib_is_reachable(minato_raised: MinatoServer) -> None:
    served = get(minato_raised, f"{MODEL_PATH}?{query_of(RAISED_MAX)}", "raised-at-the-limit")
    refused = get(minato_raised, f"{MODEL_PATH}?{query_of(RAISED_MAX + 1)}", "raised-one-over")

    assert served.status == 200, served.body[:200]
    assert_refused_414(minato_raised, refused, "raised-one-over", f"the query string is longer than {RAISED_MAX} bytes")
