"""Minato's routes relayed from Ollama's data callback: the engine's primed stream, a peer writing Ollama's
bytes on a loopback socket, and the client's bytes as the lane receives them, chunk by chunk.

Lines split across chunks, an error line in the middle of a chunk, a body cut short: the same
answers as the fallback's (tests/app/test_stream.py), from the sync pieces both drivers share."""

from __future__ import annotations

import asyncio
import json

import pytest

from minato.core.answer import AnswerStream
from minato.core.generation import Lease, Question
from minato.core.sessions import SessionManager, Turn
from minato.core.usage import Usage
from minato.observability.record import RequestRecord
from minato.ollama.wire import ChatRequest, WireMessage
from minato.settings import Settings
from minato.state.memory import LocalTurnLocks, MemoryStore, TokenQuota
from minato.state.usage import MemoryUsage
from minato.upstream.client import OllamaClient
from minato.web.lane import LaneListener
from minato.web.streaming import ChatRelay, StreamFormat
from tests.support.payloads import chat_done, chat_token, ndjson
from tests.support.wire_server import CHUNKED_HEAD, Peer, WireServer, fx_client, fx_server  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio


class Lane:
    """The client's socket: what was written, each write on its own."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.wrote = asyncio.Event()
        self.listener: LaneListener | None = None

    def write(self, chunk: bytes) -> None:
        self.written.append(chunk)
        self.wrote.set()

    @property
    def gone(self) -> bool:
        return False

    def listen(self, listener: LaneListener | None) -> None:
        self.listener = listener

    async def next_write(self) -> bytes:
        await self.wrote.wait()
        self.wrote.clear()
        return self.written[-1]


async def _answer(
    server: WireServer, client: OllamaClient, first: bytes, turn: Turn | None = None
) -> tuple[Peer, AnswerStream, RequestRecord]:
    """A primed answer whose peer wrote ``first`` (the first complete line, and maybe part of the next)."""
    request = ChatRequest(model="m", messages=[WireMessage(role="user", content="hi")], stream=True)
    opening = asyncio.create_task(client.stream_chat(request))
    peer = await server.connected.get()
    await peer.requests.get()
    peer.write(CHUNKED_HEAD)
    peer.chunk(first)
    stream = await opening
    record = RequestRecord("r", 0.0)
    usage = Usage(TokenQuota(), MemoryUsage(), None, record, "m")
    lease = Lease(turn, None, "m")
    lease.question = Question("hi", [])
    return peer, AnswerStream(stream, lease, usage, "m"), record


async def test_each_chunk_is_written_as_it_arrives_and_a_line_split_across_chunks_is_joined(
    server: WireServer, client: OllamaClient
) -> None:
    second = ndjson(chat_token(" wor", "m"))
    peer, answer, record = await _answer(server, client, ndjson(chat_token("Hel", "m")) + second[:12])
    lane = Lane()
    relaying = asyncio.create_task(ChatRelay(answer, StreamFormat.NDJSON, record).direct(lane))

    assert await lane.next_write() == b'{"token":"Hel"}\n'  # the primed batch, at once
    peer.chunk(second[12:])
    assert await lane.next_write() == b'{"token":" wor"}\n'  # the carried start of the line, joined
    peer.chunk(ndjson(chat_token("ld", "m"), chat_done("m", eval_count=3)))
    peer.last_chunk()
    last = await relaying
    tokens, done = lane.written[-1].splitlines()
    assert tokens == b'{"token":"ld"}'
    assert json.loads(done)["stats"]["eval_count"] == 3, "the done event goes out with the last token"
    assert last == b"", "nothing is held without a conversation's turn to commit first"
    assert record.tokens == 3
    assert record.first_token is not None


async def test_an_error_line_in_the_middle_of_a_chunk_ends_the_answer_after_the_tokens_before_it(
    server: WireServer, client: OllamaClient
) -> None:
    peer, answer, record = await _answer(server, client, ndjson(chat_token("Hel", "m")))
    lane = Lane()
    relaying = asyncio.create_task(ChatRelay(answer, StreamFormat.SSE, record).direct(lane))
    await lane.next_write()
    peer.chunk(ndjson(chat_token("lo", "m"), {"error": "model runner has unexpectedly stopped"}, chat_token("x", "m")))
    last = await relaying

    assert b'"token":"lo"' in lane.written[-1]
    assert b"-end\nevent: error\n" in last
    assert b"unexpectedly stopped" in last
    assert b'"x"' not in b"".join(lane.written) + last
    assert record.upstream_error == "UpstreamError"


async def test_a_body_that_ends_before_its_last_line_ends_with_an_error(
    server: WireServer, client: OllamaClient
) -> None:
    peer, answer, record = await _answer(server, client, ndjson(chat_token("Hel", "m")))
    lane = Lane()
    relaying = asyncio.create_task(ChatRelay(answer, StreamFormat.NDJSON, record).direct(lane))
    await lane.next_write()
    peer.last_chunk()  # the body is complete, without Ollama's done line
    last = await relaying

    assert json.loads(last) == {"error": "Ollama closed the stream before it was done", "done": True}
    assert record.tokens == 1, "the relayed token is counted (and charged)"


async def test_a_whole_answer_in_the_primed_batch_ends_without_reading_further(
    server: WireServer, client: OllamaClient
) -> None:
    _, answer, record = await _answer(server, client, ndjson(chat_token("Hi", "m"), chat_done("m", eval_count=1)))
    lane = Lane()
    last = await ChatRelay(answer, StreamFormat.TEXT, record).direct(lane)
    assert lane.written == [b"Hi"]
    assert last == b""
    assert record.tokens == 1


async def test_a_conversations_turn_is_committed_before_the_answers_end_leaves(
    server: WireServer, client: OllamaClient
) -> None:
    store = MemoryStore()
    sessions = SessionManager(store, LocalTurnLocks(), Settings(session_store="memory://"))
    turn = await sessions.begin("", "s")
    peer, answer, record = await _answer(server, client, ndjson(chat_token("Hel", "m")), turn)
    lane = Lane()
    relaying = asyncio.create_task(ChatRelay(answer, StreamFormat.SSE, record).direct(lane))
    await lane.next_write()
    peer.chunk(ndjson(chat_token("lo", "m"), chat_done("m")))
    last = await relaying

    assert len(lane.written) == 1, "the last batch is held from the callback: the request's task writes it"
    assert b'"token":"lo"' in last
    assert b"event: done" in last
    # By the time the last bytes are handed to the response's end, the turn is in the store: a client
    # that leaves the moment it has its done event cannot lose it.
    session = await store.get("", "s")
    assert session is not None
    assert [(m.role, m.content) for m in session.messages] == [("user", "hi"), ("assistant", "Hello")]
    turn.release()
