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

from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

import msgspec
from litestar import Request
from litestar.response import Stream
from msgspec import UNSET

from minato.backpressure import Admission, Slot
from minato.errors import ForbiddenError
from minato.handlers.common import unless_disconnected
from minato.options import GenerationOptions
from minato.record import record_of
from minato.schemas import GenerateResponse, GenerationStats
from minato.security import Caller
from minato.sessions import SessionManager, Turn
from minato.settings import Settings
from minato.streaming import Exchange, StreamFormat, stream_response
from minato.upstream import Ollama, canonical_model_name
from minato.upstream.wire import ChatRequest

#: The ``num_ctx`` cap for user keys when neither the operator nor the model names one.
FALLBACK_USER_MAX_NUM_CTX: Final = 131_072


class Question(NamedTuple):
    """What the caller asks: a message and the images that go with it."""

    message: str
    images: list[str]


#: Reads a question from the request body (vision); called only once the generation holds its slot.
QuestionReader = Callable[[], Awaitable[Question]]


class Generation(NamedTuple):
    """Everything one generation needs, gathered by its handler."""

    request: Request[Any, Any, Any]
    upstream: Ollama
    sessions: SessionManager
    admission: Admission
    settings: Settings
    params: GenerationOptions
    caller: Caller
    model: str
    question: Question | QuestionReader


async def check_num_ctx(generation: Generation) -> None:
    """Refuse a user key's ``num_ctx`` above the cap: a huge context makes Ollama reload the model for everyone."""
    asked = generation.params.num_ctx
    if asked is None or generation.caller.is_admin:
        return
    settings = generation.settings
    if settings.user_max_num_ctx:
        cap, source = settings.user_max_num_ctx, "MINATO_USER_MAX_NUM_CTX"
    else:
        context = (await generation.upstream.facts(generation.model)).context_length
        cap, source = (
            (context, "the model's context length") if context else (FALLBACK_USER_MAX_NUM_CTX, "the default cap")
        )
    if asked > cap:
        raise ForbiddenError(f"num_ctx={asked} is more than {cap} ({source}); this needs an admin key")


async def _admit(generation: Generation) -> tuple[Turn | None, Slot]:
    """Take the session's turn, then a generation slot; on any failure nothing stays taken.

    Either wait ends early if the client disconnects, except while a body is still unread: watching
    for the disconnect would consume it. Such a request holds only its queue place, which the queue
    timeout bounds.
    """
    request, params, admission = generation.request, generation.params, generation.admission
    watch = not callable(generation.question)
    turn = None
    if params.session is not None:
        # A key only ever continues its own conversations: the same id under another key is another one.
        begin = generation.sessions.begin(generation.caller.fingerprint, params.session)
        turn = await unless_disconnected(request, begin) if watch else await begin
    try:
        key = canonical_model_name(generation.model)
        slot = admission.try_acquire(key)  # the usual case, without a watcher task
        if slot is None:
            slot = await unless_disconnected(request, admission.acquire(key)) if watch else await admission.acquire(key)
    except BaseException:
        if turn is not None:
            turn.release()
        raise
    return turn, slot


def _release(turn: Turn | None, slot: Slot) -> None:
    slot.release()
    if turn is not None:
        turn.release()


async def _question(generation: Generation) -> Question:
    question = generation.question
    return await question() if callable(question) else question


async def _chat_request(generation: Generation, question: Question, turn: Turn | None) -> ChatRequest:
    """The request for Ollama. A model without vision gets the history's text without its images:
    Ollama refuses any image for such a model, which would break every later turn of a conversation
    that once showed a picture to a vision model."""
    history = turn.history() if turn is not None else []
    if any(message.images for message in history) and "vision" not in await generation.upstream.capabilities(
        generation.model
    ):
        history = [msgspec.structs.replace(message, images=[]) for message in history]
    system_prompt = turn.system_prompt if turn is not None else None
    return generation.params.chat_request(generation.model, question.message, question.images, system_prompt, history)


async def whole_answer(generation: Generation) -> GenerateResponse:
    """Ask Ollama for a whole answer, record it in the session, shape it."""
    await check_num_ctx(generation)
    request, model = generation.request, generation.model
    turn, slot = await _admit(generation)
    try:
        question = await _question(generation)
        chat = await _chat_request(generation, question, turn)
        chunk = await unless_disconnected(request, generation.upstream.chat(chat))
        if turn is not None:
            await turn.commit(model, question.message, question.images, chunk.message.content)
    finally:
        _release(turn, slot)
    record = record_of(request.scope)
    stats = GenerationStats.from_chunk(chunk)
    if record is not None:
        record.note_answer(chunk.eval_count, stats.tokens_per_second)
    return GenerateResponse(
        response=chunk.message.content,
        model=chunk.model or model,
        done_reason=chunk.done_reason,
        stats=stats,
        thinking=chunk.message.thinking or UNSET,
    )


async def streamed_answer(generation: Generation) -> Stream:
    """Prime Ollama's stream (so its status is known), then relay it; the session records the
    exchange only if the stream completes. The slot and the turn are held until the stream ends."""
    await check_num_ctx(generation)
    request = generation.request
    fmt = StreamFormat.negotiate(request.headers.get("accept"))
    turn, slot = await _admit(generation)
    try:
        question = await _question(generation)
        chat = await _chat_request(generation, question, turn)
        stream = await unless_disconnected(request, generation.upstream.stream_chat(chat))
    except BaseException:
        _release(turn, slot)
        raise
    exchange = Exchange(turn, question.message, question.images) if turn is not None else None
    return stream_response(stream, fmt, generation.model, record_of(request.scope), exchange, slot)


__all__ = ["Generation", "Question", "QuestionReader", "check_num_ctx", "streamed_answer", "whole_answer"]
