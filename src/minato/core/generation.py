"""One home for a generation: admit it, open or continue its conversation, ask Ollama, relay, record, release.

The order is the point:

1. what needs no slot is checked first (the caller's ``num_ctx`` against the model's context);
2. the conversation's turn is taken, then a generation slot (waiting for a turn never holds a slot);
3. only then is a vision request's body read, so uploads queued behind a busy GPU wait in TCP
   flow control instead of in Minato's memory;
4. Ollama is asked, and the turn is recorded only when the answer completed;
5. the turn and the slot are released exactly once, however the request ends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgspec
from msgspec import UNSET

from minato.auth.caller import Caller
from minato.core.admission import Admission, Slot
from minato.core.answer import AnswerStream
from minato.core.options import GenerationOptions
from minato.core.policy import Policy
from minato.core.schemas import GenerateResponse, GenerationStats
from minato.core.sessions import SessionManager, Turn
from minato.core.usage import Usage
from minato.core.watch import Watch
from minato.observability.record import RequestRecord
from minato.ollama.names import canonical_model_name
from minato.ollama.wire import ChatRequest
from minato.settings import Settings
from minato.upstream.ports import Generator


class Question(NamedTuple):
    """What the caller asks: a message and the images that go with it."""

    message: str
    images: list[str]


#: Reads a question from the request body (vision); called only once the generation holds its slot.
QuestionReader = Callable[[], Awaitable[Question]]


class GenerationParts(NamedTuple):
    """What every generation route gathers alike: its request's watch, record and usage, its model and
    the app's services."""

    watch: Watch
    record: RequestRecord | None
    usage: Usage
    tokens_left: int | None
    """The tokens the caller's quota still allowed when the request began (``None``: no quota)."""
    upstream: Generator
    sessions: SessionManager
    admission: Admission
    settings: Settings
    policy: Policy
    caller: Caller
    model: str


class Generation(NamedTuple):
    """Everything one generation needs: the parts its route gathered, its parameters and its question."""

    parts: GenerationParts
    params: GenerationOptions
    question: Question | QuestionReader


async def check_num_ctx(generation: Generation) -> None:
    """Refuse a user key's ``num_ctx`` above the cap: a huge context makes Ollama reload the model for everyone."""
    parts = generation.parts
    await parts.policy.check_num_ctx(parts.caller, parts.upstream, parts.model, generation.params.num_ctx)


class Lease:
    """What a running generation holds: its conversation's turn (if any) and its slot.

    The turn is committed at most once, and only by :meth:`commit`, i.e. once the answer completed;
    the turn and the slot are released exactly once by :meth:`release`, whichever way the request
    ends (done, error, disconnect, timeout, shutdown): every path calls it, later calls do nothing.
    """

    __slots__ = ("_committed", "_slot", "_turn", "model", "question")

    def __init__(self, turn: Turn | None, slot: Slot | None, model: str) -> None:
        self._turn = turn
        self._slot = slot
        self._committed = False
        self.model = model
        self.question: Question | None = None

    @property
    def turn(self) -> Turn | None:
        """The conversation's turn, while it is held."""
        return self._turn

    def hold(self, slot: Slot) -> None:
        """Take on the generation slot admission granted."""
        self._slot = slot

    async def commit(self, answer: str) -> None:
        """Record the question and its completed answer in the conversation (once; nothing without one)."""
        if self._committed or self._turn is None or self.question is None:
            return
        self._committed = True
        await self._turn.commit(self.model, self.question.message, self.question.images, answer)

    def release(self) -> None:
        """Give back the slot, then the turn (idempotent)."""
        slot, self._slot = self._slot, None
        turn, self._turn = self._turn, None
        if slot is not None:
            slot.release()
        if turn is not None:
            turn.release()


async def _admit(generation: Generation) -> Lease:
    """Take the session's turn, then a generation slot; on any failure nothing stays taken.

    Either wait ends early if the client disconnects, except while a body is still unread: watching
    for the disconnect would consume it. Such a request holds only its queue place, which the queue
    timeout bounds.
    """
    parts, params = generation.parts, generation.params
    watch = None if callable(generation.question) else parts.watch
    turn = None
    if params.session is not None:
        # A key only ever continues its own conversations: the same id under another key is another one.
        begin = parts.sessions.begin(parts.caller.fingerprint, params.session)
        turn = await watch.until(begin) if watch is not None else await begin
    lease = Lease(turn, None, parts.model)
    try:
        slot = await take_slot(parts.admission, parts.model, watch, parts.caller, parts.record)
    except BaseException:
        lease.release()
        raise
    lease.hold(slot)
    return lease


async def take_slot(
    admission: Admission, model: str, watch: Watch | None, caller: Caller, record: RequestRecord | None
) -> Slot:
    """A generation slot for ``model``, in ``caller``'s key's turn: at once when one is free, else after a
    bounded wait that a disconnect ends (``watch``: ``None`` while the body is unread, as watching would
    consume it). ``record.queue_seconds`` says how long it waited (left at 0 when it did not)."""
    key = canonical_model_name(model)
    slot = admission.try_acquire(key, caller, record)  # the usual case, without watching
    if slot is not None:
        return slot
    waiting = admission.acquire(key, caller, record)
    return await watch.until(waiting) if watch is not None else await waiting


async def _question(generation: Generation) -> Question:
    question = generation.question
    return await question() if callable(question) else question


async def _chat_request(generation: Generation, question: Question, turn: Turn | None) -> ChatRequest:
    """The request for Ollama. A model without vision gets the history's text without its images:
    Ollama refuses any image for such a model, which would break every later turn of a conversation
    that once showed a picture to a vision model."""
    history = turn.history() if turn is not None else []
    if any(message.images for message in history) and "vision" not in await generation.parts.upstream.capabilities(
        generation.parts.model
    ):
        history = [msgspec.structs.replace(message, images=[]) for message in history]
    system_prompt = turn.system_prompt if turn is not None else None
    params = generation.params.within(generation.parts.tokens_left)
    return params.chat_request(generation.parts.model, question.message, question.images, system_prompt, history)


async def _admitted(generation: Generation) -> tuple[Lease, ChatRequest]:
    """Check what needs no slot, take the turn and the slot, read the question: the lease and the
    request for Ollama (on any failure nothing stays taken)."""
    await check_num_ctx(generation)
    lease = await _admit(generation)
    try:
        question = await _question(generation)
        lease.question = question
        return lease, await _chat_request(generation, question, lease.turn)
    except BaseException:
        lease.release()
        raise


def _affinity(lease: Lease) -> str | None:
    """What names the conversation to a pool of backends, so its turns stay where its model is warm."""
    turn = lease.turn
    return None if turn is None else f"{turn.owner}:{turn.session_id}"


async def whole_answer(generation: Generation) -> GenerateResponse:
    """Ask Ollama for a whole answer, record it in the session, shape it; charge what it generated."""
    parts = generation.parts
    lease, chat = await _admitted(generation)
    record = parts.record
    try:
        sent = time.perf_counter()
        if record is not None:
            record.sent = sent
        chunk = await parts.watch.until(parts.upstream.chat(chat, affinity=_affinity(lease)))
        parts.usage.began()
        ollama_seconds = time.perf_counter() - sent
        await lease.commit(chunk.message.content)
        stats = GenerationStats.from_chunk(chunk)
        if record is not None:
            record.ollama_seconds = ollama_seconds
            record.note_answer(chunk.eval_count, stats.tokens_per_second)
            record.prompt_tokens = chunk.prompt_eval_count
            record.backend = chunk.backend
    finally:
        lease.release()
        await parts.usage.charge()
    return GenerateResponse(
        response=chunk.message.content,
        model=chunk.model or parts.model,
        done_reason=chunk.done_reason,
        stats=stats,
        thinking=chunk.message.thinking or UNSET,
    )


async def streamed_answer(generation: Generation) -> AnswerStream:
    """Prime Ollama's stream (so its status is known before anything is written), ready to relay."""
    parts = generation.parts
    lease, chat = await _admitted(generation)
    if parts.record is not None:
        parts.record.sent = time.perf_counter()
    try:
        stream = await parts.watch.until(parts.upstream.stream_chat(chat, affinity=_affinity(lease)))
    except BaseException:
        lease.release()
        raise
    if parts.record is not None:
        parts.record.backend = stream.backend
    parts.usage.began()
    return AnswerStream(stream, lease, parts.usage, parts.model)


__all__ = [
    "Generation",
    "GenerationParts",
    "Lease",
    "Question",
    "QuestionReader",
    "check_num_ctx",
    "streamed_answer",
    "take_slot",
    "whole_answer",
]
