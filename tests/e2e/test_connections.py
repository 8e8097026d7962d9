"""Client connections are bounded: a deadline for the request head, a cap on open connections.

Raw sockets against Minato as a real process, since HTTP clients always send whole requests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from tests.support.servers import MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = "0.5"
CAP = 20
READ_TIMEOUT = 10.0
TRICKLE_LINES = 40
PACED_STREAM = "/stream/standin/paced:10x100?message=hi"
"""Ten tokens 100 ms apart: a response that outlasts the head deadline."""


@pytest.fixture(scope="module")
def quick(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with a short head deadline."""
    server = start_minato(standin_url, tmp_path_factory.mktemp("quick") / "minato.log", header_timeout=HEADER_TIMEOUT)
    yield server
    stop_minato(server)


@contextlib.contextmanager
def connection(server: MinatoServer) -> Iterator[socket.socket]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT) as sock:
        yield sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within the read timeout."""
    data = b""
    try:
        while chunk := sock.recv(65_536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def trickle(sock: socket.socket, line: bytes | None = None) -> tuple[int, bytes]:
    """Send a header line (or ``line``) every 0.3 s until the server answers or closes, for 12 s at most.

    Return how many lines were sent and what came back (empty when the server just closed).
    """
    sock.settimeout(0.3)
    for sent in range(1, TRICKLE_LINES + 1):
        try:
            sock.sendall(line or b"x-slow-%d: 1\r\n" % sent)
            return sent, sock.recv(65_536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return sent, b""
    return TRICKLE_LINES, b""


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: minato\r\n\r\n".encode()


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (content-length or chunked) off a connection."""
    status_line = stream.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in {b"\r\n", b""}:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(stream.readline().strip(), 16):
            body += stream.read(size)
            stream.readline()
        stream.readline()
    else:
        body = stream.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def events(server: MinatoServer, name: str) -> list[dict[str, object]]:
    found = []
    for line in server.log_lines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


def test_a_connection_that_sends_nothing_gets_a_408_and_is_closed(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        data, closed = read_until_closed(sock)

    assert closed, "the idle connection was kept open"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head
    assert "request head" in json.loads(body)["detail"]


def test_a_connection_trickling_header_lines_is_closed(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        lines_sent, answer = trickle(sock)

    assert lines_sent < TRICKLE_LINES, "a client trickling header lines was kept for ever"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")


def test_a_whole_request_on_a_fresh_connection_is_served(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        sock.sendall(request("/health"))
        status, _, body = read_response(sock.makefile("rb"))

    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_a_keep_alive_connection_outlives_the_deadline_while_it_is_answered(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request("/health"))
        first, _, _ = read_response(stream)
        sock.sendall(request(PACED_STREAM))
        streamed, _, answer = read_response(stream)
        sock.sendall(request("/health"))
        last, _, _ = read_response(stream)

    assert (first, streamed, last) == (200, 200, 200)
    assert len(answer.split()) == 10, "the slow stream was not cut by the head deadline"


def test_a_kept_alive_connection_sending_only_blank_lines_is_closed_without_an_answer(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        sock.sendall(request("/health"))
        status, _, _ = read_response(sock.makefile("rb"))
        lines_sent, rest = trickle(sock, b"\r\n")  # the parser skips blank lines between requests

    assert status == 200
    assert lines_sent < TRICKLE_LINES, "blank lines kept an idle connection open for ever"
    assert rest == b"", "an idle kept-alive connection is closed like uvicorn's keep-alive timeout, without a 408"


def test_pipelined_requests_behind_a_slow_response_are_all_answered(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request(PACED_STREAM) + request("/health"))
        streamed, _, answer = read_response(stream)
        after, _, _ = read_response(stream)

    assert (streamed, after) == (200, 200)
    assert len(answer.split()) == 10


def test_a_head_trickling_behind_a_slow_response_lets_it_finish_then_is_closed(quick: MinatoServer) -> None:
    with connection(quick) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request(PACED_STREAM) + b"GET /health HTTP/1.1\r\n")
        streamed, _, answer = read_response(stream)
        lines_sent, rest = trickle(sock)  # far beyond the deadline and uvicorn's keep-alive timeout

    assert streamed == 200
    assert len(answer.split()) == 10, "the response in flight was not cut"
    assert lines_sent < TRICKLE_LINES, "the head trickling in behind the response was waited for for ever"
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408 ")


def test_many_head_timeouts_are_logged_in_a_bounded_number_of_lines(
    standin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_minato(
        standin_url, tmp_path_factory.mktemp("timeouts") / "minato.log", header_timeout=HEADER_TIMEOUT
    )
    try:
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(connection(server)) for _ in range(30)]
            answers = [read_until_closed(sock) for sock in sockets]
        logged = events(server, "request_head_timeout")
    finally:
        stop_minato(server)

    assert all(closed and data.startswith(b"HTTP/1.1 408 ") for data, closed in answers)
    # One line at once, then one summary per 10 s: the test is far shorter than that.
    assert 1 <= len(logged) <= 2
    assert logged[0]["count"] == 1
    assert logged[0]["header_timeout"] == float(HEADER_TIMEOUT)


def test_beyond_the_cap_a_new_connection_is_refused_at_once_until_one_closes(
    standin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_minato(
        standin_url,
        tmp_path_factory.mktemp("capped") / "minato.log",
        header_timeout="60",
        max_client_connections=str(CAP),
    )
    try:
        with contextlib.ExitStack() as stack:
            idle = [stack.enter_context(connection(server)) for _ in range(CAP)]
            refused = []
            for _ in range(25):
                with connection(server) as sock:
                    refused.append(read_until_closed(sock))
            for sock in idle:
                sock.setblocking(False)
            still_open = sum(1 for sock in idle if _is_open(sock))
        served = _first_answer_once_below_the_cap(server)
        logged = events(server, "client_connection_refused")
    finally:
        stop_minato(server)

    assert still_open == CAP, "the connections within the cap were kept"
    for data, closed in refused:
        assert closed, "a connection beyond the cap was kept open"
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in head
        assert "too many open connections" in json.loads(body)["detail"]
    assert served == 200, "a new connection is served again once the idle ones are gone"
    assert 1 <= len(logged) <= 2
    assert logged[0]["count"] == 1
    assert logged[0]["max_client_connections"] == CAP


def _is_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _first_answer_once_below_the_cap(server: MinatoServer) -> int:
    """The status of ``/health`` on a new connection, retried while the server notices the closed ones."""
    status = 0
    for _ in range(100):
        with connection(server) as sock, contextlib.suppress(ConnectionError):
            sock.sendall(request("/health"))
            status, _, _ = read_response(sock.makefile("rb"))
        if status == 200:
            break
        time.sleep(0.05)
    return status


@pytest.fixture(scope="module")
def slow_bodies(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with a short body deadline, and as many client connections as the report had."""
    server = start_minato(
        standin_url,
        tmp_path_factory.mktemp("bodies") / "minato.log",
        body_timeout="1",
        max_client_connections=str(CAP),
    )
    yield server
    stop_minato(server)


#: Every route of Minato's own API that reads a body, with the start of a body it would take.
OWN_BODIES: list[tuple[str, str, bytes, str]] = [
    ("POST", "/llama3.2:1b", b'{"message":', "application/json"),
    ("POST", "/stream/llama3.2:1b", b'{"message":', "application/json"),
    ("PUT", "/chat/trickled/system_prompt", b'{"system_prompt":', "application/json"),
    (
        "POST",
        "/vision/llava:7b?message=hi",
        b"--b\r\nContent-Disposition: form-data;",
        "multipart/form-data; boundary=b",
    ),
]


def _trickled_head(method: str, path: str, content_type: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(("method", "path", "start", "content_type"), OWN_BODIES)
def test_a_body_trickled_to_minatos_own_routes_is_a_408_in_minatos_shape(
    slow_bodies: MinatoServer, standin: object, method: str, path: str, start: bytes, content_type: str
) -> None:
    with connection(slow_bodies) as sock:
        sock.sendall(_trickled_head(method, path, content_type) + start)
        sent, answer = trickle(sock, b" ")
        rest, closed = read_until_closed(sock)

    head, _, body = (answer + rest).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), (sent, answer + rest)
    assert json.loads(body) == {"detail": "the request body did not arrive within 1 s (MINATO_BODY_TIMEOUT)"}
    assert closed, "a connection whose body was never read in full must not be reused"
    assert sent < TRICKLE_LINES, "the deadline counts from the first read, not from each byte"


def test_trickled_bodies_cannot_take_every_connection(slow_bodies: MinatoServer, standin: object) -> None:
    """The report: 20 connections trickling a body, one byte now and then, took every connection slot
    and ``/health`` answered 503. Each is now answered 408 and closed, and the server serves again."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connection(slow_bodies)) for _ in range(CAP)]
        for sock in socks:
            sock.sendall(_trickled_head("POST", "/llama3.2:1b", "application/json") + b"{")
        answers = [read_until_closed(sock) for sock in socks]
    served = _first_answer_once_below_the_cap(slow_bodies)

    assert all(closed and data.startswith(b"HTTP/1.1 408 ") for data, closed in answers), answers
    assert served == 200


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/v1/messages"])
def test_a_door_body_trickled_past_the_body_timeout_is_a_408_in_the_doors_shape(
    slow_bodies: MinatoServer, standin: object, path: str
) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with connection(slow_bodies) as sock:
        sock.sendall(head.encode() + b'{"model":')
        started = time.monotonic()
        status, _, body = read_response(sock.makefile("rb"))

    assert status == 408
    assert "MINATO_BODY_TIMEOUT" in json.dumps(json.loads(body))
    assert time.monotonic() - started < READ_TIMEOUT
