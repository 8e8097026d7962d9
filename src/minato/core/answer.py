"""A streamed answer being relayed: Ollama's batches, the conversation's turn, the slot and the charge.

Two drivers relay it, over the same synchronous pieces (so they cannot disagree on what an answer
is): the web layer's direct relay feeds Ollama's bytes to :meth:`AnswerStream.feed` from the
upstream connection's data callback, and the fallback awaits :meth:`AnswerStream.batches`. Either
way :meth:`AnswerStream.note` keeps the answer's text and says when the turn is to be committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import msgspec

from minato.errors import MinatoError, UpstreamError
from minato.ollama.wire import ChatChunk
from minato.upstream.failures import log_library_error

if TYPE_CHECKING:
    from minato.core.generation import Lease
    from minato.core.usage import Usage
    from minato.upstream.sink import Source
    from minato.upstream.streams import ChunkStream

_decoder: Final = msgspec.json.Decoder(ChatChunk)


class AnswerStream:
    """A primed answer from Ollama, for the web layer to relay, then :meth:`close`.

    The session records the exchange only if the stream completes, and the commit comes before the
    last batch is handed on (:attr:`commit_due`), so a client that leaves the moment it has its
    ``done`` event cannot lose the turn. The slot and the turn are held until the stream ends, and what
    it relayed is charged then, whichever way it ends: completed, broken off by Ollama or left by its
    client (the web layer calls :meth:`close`). Either end may come first; the second does nothing more.
    """

    __slots__ = (
        "_answer",
        "_carry",
        "_lease",
        "_stream",
        "_usage",
        "backend",
        "commit_due",
        "complete",
        "failure",
        "model",
    )

    def __init__(self, stream: ChunkStream, lease: Lease, usage: Usage, model: str) -> None:
        self._stream = stream
        self._lease = lease
        self._usage = usage
        self.model = model
        self.backend = stream.backend
        # Only a conversation keeps the answer's text: without one nothing would read it.
        self._answer: list[str] | None = [] if lease.turn is not None else None
        self._carry = b""
        self.complete = False
        """Whether the last line (``"done": true``) came."""
        self.commit_due = False
        """The answer is complete and its turn is to be committed (:meth:`commit`) before its last batch goes out."""
        self.failure: MinatoError | None = None
        """Why the answer cannot complete, once the bytes fed said so (an error line, a line that is not
        Ollama's, an end before the last line)."""

    @property
    def source(self) -> Source | None:
        """Ollama's body, for a relay from its data callback (``None``: read it with :meth:`batches`)."""
        return self._stream.source

    # The synchronous pieces.

    def note(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        """Keep what ``batch`` adds to the answer; note whether it completes it."""
        answer = self._answer
        if answer is not None:
            answer.extend([chunk.message.content for chunk in batch])
        if batch and batch[-1].done:
            self.complete = True
            self.commit_due = answer is not None
        return batch

    def primed(self) -> list[ChatChunk]:
        """The batch priming read (the first of a direct relay), taking over the bytes it read past it."""
        self._carry = self._stream.take_rest()
        return self._checked(self._stream.first)

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        """The lines ``chunk`` completes, decoded, up to a line Ollama failed with (then :attr:`failure`)."""
        end = chunk.rfind(b"\n")
        if end < 0:
            self._carry += chunk
            return []
        lines = self._carry + chunk[: end + 1] if self._carry else chunk[: end + 1]
        self._carry = chunk[end + 1 :]
        return self._decoded(lines)

    def ended(self) -> list[ChatChunk]:
        """Ollama's body ended: its unterminated last line, decoded; without the last line the answer
        was cut short (:attr:`failure`)."""
        rest, self._carry = self._carry.strip(), b""
        batch = self._decoded(rest) if rest else []
        if not self.complete and self.failure is None:
            self.failure = UpstreamError("Ollama closed the stream before it was done")
        return batch

    def _decoded(self, lines: bytes) -> list[ChatChunk]:
        try:
            batch = _decoder.decode_lines(lines)
        except msgspec.DecodeError as exc:
            log_library_error("ollama_line_unreadable", exc, self._stream.ollama_url)
            shape = isinstance(exc, msgspec.ValidationError)
            self.failure = UpstreamError(
                "Ollama sent a line that does not have the shape of Ollama's API"
                if shape
                else "Ollama sent a line that is not valid JSON"
            )
            return []
        return self._checked(batch)

    def _checked(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        """``batch`` up to an error line, which becomes the :attr:`failure` (the lines before it still count)."""
        for index, chunk in enumerate(batch):
            if chunk.error:
                self.failure = UpstreamError(f"Ollama failed mid-stream: {chunk.error}")
                return self.note(batch[:index])
        return self.note(batch)

    # The awaited ends.

    async def commit(self) -> None:
        """Record the completed answer in the conversation (once, when :attr:`commit_due`)."""
        if self.commit_due and self._answer is not None:
            self.commit_due = False
            await self._lease.commit("".join(self._answer))

    async def batches(self) -> AsyncIterator[list[ChatChunk]]:
        """Ollama's batches as they arrive (the fallback relay); the stream is closed when they end (or fail)."""
        try:
            async for batch in self._stream.batches():
                self.note(batch)
                if self.commit_due:
                    await self.commit()
                yield batch
        finally:
            await self.close()

    async def close(self) -> None:
        """Close Ollama's stream (so Ollama stops at once), release the lease, charge what was relayed."""
        await self._stream.aclose()
        self._lease.release()
        await self._usage.charge()


__all__ = ["AnswerStream"]
