"""The floor relay: the least CPU a Python relay in front of Ollama can spend, the benchmark's reference.

uvloop and httptools protocols, no framework, no task and no ``await`` per token: the server protocol
(:class:`Client`) parses the request, leases a keep-alive connection to Ollama (:class:`Upstream`), and
each body chunk Ollama sends is written to the client's transport from the upstream protocol's data
callback, as one chunked-encoding frame. ``GET /stream/{model}?message=`` decodes Ollama's NDJSON
with msgspec and writes the text; ``POST /api/chat`` and ``POST /v1/chat/completions`` pass Ollama's
bytes through; ``GET /{model}?message=`` and non-streamed POSTs answer whole. Flow control: past the
client transport's high-water mark the upstream socket stops being read (Ollama's send buffer fills),
below the low-water mark it is read again. No auth, limits, metrics or logs: what it costs is the floor.

``python -m bench.floor_relay --port PORT --upstream http://127.0.0.1:11434``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httptools
import msgspec
import uvloop

HIGH_WATER: Final = 64 * 1024  # bytes queued for the client before Ollama's socket stops being read
LOW_WATER: Final = 16 * 1024
PASSED: Final = frozenset({b"/api/chat", b"/v1/chat/completions"})
TEXT: Final = b"text/plain; charset=utf-8"
JSON: Final = b"application/json"


class Message(msgspec.Struct):
    role: str = "user"
    content: str = ""


class Line(msgspec.Struct):
    """What the relay reads of one line of Ollama's chat answer (a stream's line, or a whole answer)."""

    model: str = ""
    message: Message | None = None
    done: bool = False
    done_reason: str | None = None
    eval_count: int = 0
    total_duration: int = 0


class Ask(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    stream: bool


class Whole(msgspec.Struct):
    """``GET /{model}``'s answer: the text and a few of Ollama's figures, re-encoded."""

    model: str
    response: str
    done_reason: str | None
    eval_count: int
    total_duration: int


class Flag(msgspec.Struct):
    stream: bool | None = None  # absent: Ollama streams, OpenAI does not


_lines = msgspec.json.Decoder(Line)
_flag = msgspec.json.Decoder(Flag)
_encode = msgspec.json.Encoder().encode


class Upstream(asyncio.Protocol):
    """One keep-alive connection to Ollama; its response's chunks go straight to the leasing client."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.transport = cast(asyncio.Transport, None)
        self.content_type = JSON

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, client: Client, request: bytes) -> None:
        if client.closed:  # the client left while the connection was opening
            self.pool.idle.append(self)
            return
        self.client, client.upstream = client, self
        if client.paused:
            self.transport.pause_reading()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None:
            self.client.upstream_failed()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        if self.client is not None:
            self.client.upstream_head(self.parser.get_status_code(), self.content_type)

    def on_body(self, body: bytes) -> None:
        if self.client is not None:
            self.client.upstream_body(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.upstream = None
            client.upstream_end()
        if not self.parser.should_keep_alive():
            self.transport.close()
            return
        if not self.transport.is_reading():
            self.transport.resume_reading()  # an idle connection must see Ollama close it
        self.pool.idle.append(self)

    def abandon(self) -> None:
        """The client left mid-answer: closing the socket is what tells Ollama to stop generating."""
        self.client = None
        self.transport.close()


class Pool:
    """Idle keep-alive connections to one Ollama, opened on demand and never more than in use at once."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 11434
        self.idle: list[Upstream] = []
        self.opening: set[asyncio.Task[None]] = set()

    def lease(self, client: Client, request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, request)
            return
        task = asyncio.get_running_loop().create_task(self._open(client, request))  # once per new connection
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open(self, client: Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            client.upstream_failed()
            return
        upstream.send(client, request)


class Client(asyncio.Protocol):
    """One client connection: a request at a time, relayed to a leased :class:`Upstream`."""

    def __init__(self, pool: Pool) -> None:
        self.pool, self.parser = pool, httptools.HttpRequestParser(self)
        self.transport = cast(asyncio.Transport, None)
        self.upstream: Upstream | None = None
        self.url, self.body, self.answer = b"", bytearray(), bytearray()
        self.closed = self.paused = self.streaming = self.text = self.whole_json = self.head_sent = False
        self.keep_alive, self.status, self.content_type = True, 200, JSON

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.respond(400, b"bad request", TEXT)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.upstream is not None:
            self.upstream.abandon()
            self.upstream = None

    def pause_writing(self) -> None:  # the client's buffer passed HIGH_WATER: stop reading Ollama
        self.paused = True
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        method, url = self.parser.get_method(), httptools.parse_url(self.url)
        path, self.answer, self.head_sent, self.text, self.whole_json = url.path, bytearray(), False, False, False
        if method == b"GET" and path == b"/health":
            self.respond(200, b"ok", TEXT)
        elif method == b"POST" and path in PASSED:
            flag = _flag.decode(self.body).stream
            self.streaming = flag if flag is not None else path == b"/api/chat"
            self.ask(path, bytes(self.body))
        elif method == b"GET" and len(path) > 1:
            message = parse_qs((url.query or b"").decode()).get("message", [""])[0]
            model = unquote(path.decode())
            self.streaming = self.text = model.startswith("/stream/")
            model = model.removeprefix("/stream/").lstrip("/")
            self.whole_json = not self.streaming
            self.ask(b"/api/chat", _encode(Ask(model, [Message("user", message)], self.streaming)))
        else:
            self.respond(404, b"not found", TEXT)

    def ask(self, path: bytes, body: bytes) -> None:
        head = b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self.pool.lease(self, head % (path, self.pool.host.encode(), self.pool.port, len(body)) + body)

    def respond(self, status: int, body: bytes, content_type: bytes) -> None:
        head = b"HTTP/1.1 %d \r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (status, content_type, len(body))
        self.transport.write(head + body)
        if not self.keep_alive:
            self.transport.close()

    def upstream_head(self, status: int, content_type: bytes) -> None:
        self.streaming = self.streaming and status == 200  # an error is relayed whole, as Ollama sent it
        self.whole_json = self.whole_json and status == 200
        self.status, self.content_type = status, TEXT if self.text else content_type
        if self.streaming:
            head = b"HTTP/1.1 200 \r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % self.content_type
            self.transport.write(head)
            self.head_sent = True

    def upstream_body(self, chunk: bytes) -> None:
        if not self.streaming:
            self.answer += chunk
            return
        if self.text:  # whole lines only; a line cut between two reads waits for its end
            self.answer += chunk
            end = self.answer.rfind(b"\n") + 1
            if not end:
                return
            lines = self.answer[:end].splitlines()
            del self.answer[:end]
            text = "".join(line.message.content for line in map(_lines.decode, lines) if line.message)
            if not text:
                return
            chunk = text.encode()
        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def upstream_end(self) -> None:
        if self.closed:
            return
        if self.streaming:
            self.transport.write(b"0\r\n\r\n")
            if not self.keep_alive:
                self.transport.close()
        elif self.whole_json:
            line = _lines.decode(self.answer)
            text = line.message.content if line.message else ""
            whole = Whole(line.model, text, line.done_reason, line.eval_count, line.total_duration)
            self.respond(200, _encode(whole), JSON)
        else:
            self.respond(self.status, bytes(self.answer), self.content_type)

    def upstream_failed(self) -> None:
        self.upstream = None
        if self.head_sent or self.closed:
            self.transport.close()  # a stream cut short: the client sees the missing last frame
        else:
            self.respond(502, b"Ollama did not answer", TEXT)


async def serve(host: str, port: int, upstream: str, ready: asyncio.Future[int] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or until cancelled); ``ready`` gets the bound port."""
    loop = asyncio.get_running_loop()
    pool = Pool(upstream)
    server = await loop.create_server(lambda: Client(pool), host, port, backlog=1024)
    stop = asyncio.Event()
    if ready is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    else:
        ready.set_result(server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        server.close()
        for upstream_ in pool.idle:
            upstream_.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_relay", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="http://127.0.0.1:11434")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
