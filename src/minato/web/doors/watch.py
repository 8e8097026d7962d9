"""Reading a door's stream as it passes: its token counts, whether it ended as its dialect ends, and
the usage frame Minato asked for dropped.

Synchronous and written once: both drivers of a door's relay (:mod:`minato.web.relaying`) feed it
Ollama's bytes, from the upstream connection's data callback or from an awaited read.
"""

from __future__ import annotations

import re
from typing import Final

from minato.web.doors.counts import counts_of
from minato.web.rendering import StreamDialect

#: What marks a frame carrying one generated token, by dialect: such frames are counted as they pass, so
#: a stream the client leaves (or that breaks) is charged what it relayed; Ollama's own count, when the
#: stream ends with it, replaces theirs.
_TOKEN_FRAMES: Final = {
    StreamDialect.NDJSON: b'"done":false',
    StreamDialect.OPENAI: b'"finish_reason":null',
    StreamDialect.RESPONSES: b".delta\ndata:",
    StreamDialect.ANTHROPIC: b"event: content_block_delta",
}


class StreamWatch:
    """Reads a stream as it passes: its token counts, and whether it ended as its dialect ends."""

    __slots__ = (
        "_carry",
        "_dialect",
        "_marker",
        "_sep",
        "_strip",
        "ended",
        "eval_duration",
        "failure",
        "prompt",
        "relayed",
        "tokens",
    )

    def __init__(self, dialect: StreamDialect, strip_usage: bool, *, generation: bool = True) -> None:
        self._dialect = dialect
        self._sep = b"\n" if dialect is StreamDialect.NDJSON else b"\n\n"
        self._strip = strip_usage
        self._marker = _TOKEN_FRAMES[dialect] if generation else b""
        self._carry = b""
        self.ended = False
        self.failure = ""
        """The error frame Ollama ended the stream with (the stream then ends, as its dialect says a
        failure ends, and the client has the error, but it is Ollama's failure all the same)."""
        self.tokens = 0
        """Ollama's own count of the answer's tokens, once a frame carried it."""
        self.relayed = 0
        """Frames carrying a token that passed so far."""
        self.eval_duration = 0
        self.prompt: int | None = None
        """Ollama's count of the prompt's tokens, once a frame carried it."""

    @property
    def counted(self) -> int:
        """The tokens to charge: Ollama's count once known, else the token frames that passed."""
        return self.tokens or self.relayed

    def feed(self, chunk: bytes) -> bytes:
        """Look at ``chunk``; return the bytes to write (the chunk itself unless a frame is dropped)."""
        data = self._carry + chunk if self._carry else chunk
        end = data.rfind(self._sep)
        if end < 0:
            self._carry = data
            return b"" if self._strip else chunk
        cut = end + len(self._sep)
        self._carry = data[cut:]
        if self._marker:
            self.relayed += data.count(self._marker, 0, cut)
        self._look(data, cut)
        if not self._strip:
            return chunk
        return self._without_usage_frame(data[:cut])

    def rest(self) -> bytes:
        """What a dropping watch still holds when the stream ends (an unterminated last frame)."""
        rest, self._carry = self._carry, b""
        return rest if self._strip else b""

    def _look(self, data: bytes, end: int) -> None:
        # Whatever ends a stream is its last frame: only the last complete one is searched for it.
        last = max(data.rfind(self._sep, 0, end - len(self._sep)), 0)
        if self._dialect is StreamDialect.NDJSON:
            done = data.find(b'"done":true', last, end)
            if done >= 0:
                self.ended = True
                counts = counts_of(self._frame_at(data, done), self._dialect)
                if counts is not None:
                    self.tokens, self.eval_duration = counts.eval_count, counts.eval_duration
                    self.prompt = counts.prompt_eval_count
            elif self._ends(data, last, end):
                self.ended = True
                self._note_failure(data, last, end)
            return
        at = data.rfind(b'"usage":{', 0, end)
        if at >= 0:
            frame = self._frame_at(data, at)
            data_at = frame.find(b"data: ")
            counts = counts_of(frame[data_at + 6 :], self._dialect) if data_at >= 0 else None
            if counts is not None and counts.tokens():
                self.tokens = counts.tokens()
            if counts is not None and counts.prompt():
                self.prompt = counts.prompt()
        if self._ends(data, last, end):
            self.ended = True
            self._note_failure(data, last, end)

    def _note_failure(self, data: bytes, start: int, end: int) -> None:
        for marker in _FAILURES[self._dialect]:
            at = data.find(marker, start, end)
            if at >= 0:
                self.failure = self._frame_at(data, at)[:_FAILURE_LOGGED].decode("utf-8", "replace").strip()
                return

    def _ends(self, data: bytes, start: int, end: int) -> bool:
        return any(data.find(marker, start, end) >= 0 for marker in _TERMINATORS[self._dialect])

    def _frame_at(self, data: bytes, at: int) -> bytes:
        start = data.rfind(self._sep, 0, at)
        start = 0 if start < 0 else start + len(self._sep)
        stop = data.find(self._sep, at)
        return data[start : stop if stop >= 0 else len(data)]

    def _without_usage_frame(self, frames: bytes) -> bytes:
        """The frames without the usage Minato asked for: the usage-only frame dropped, and the
        ``usage`` member of every other frame cut out (``/v1/completions`` puts one in each chunk)."""
        if b'"usage"' not in frames:
            return frames
        kept = [
            _USAGE_MEMBER.sub(b"", frame)
            for frame in frames.split(self._sep)
            if not (b'"choices":[]' in frame and b'"usage"' in frame)
        ]
        return self._sep.join(kept)


#: A ``usage`` member and the comma joining it to its neighbour (its counts hold no nested object).
_USAGE_MEMBER: Final = re.compile(rb',"usage":\{[^{}]*\}|"usage":\{[^{}]*\},?')


#: The terminators of :data:`_TERMINATORS` that report a failure, and how much of such a frame is logged.
_FAILURES: Final = {
    StreamDialect.NDJSON: (b'{"error"',),
    StreamDialect.OPENAI: (b'data: {"error"',),
    StreamDialect.RESPONSES: (b"event: response.failed", b"event: error"),
    StreamDialect.ANTHROPIC: (b"event: error",),
}
_FAILURE_LOGGED: Final = 500

#: What the last frame of a complete stream (or one that reports its own failure) contains, by dialect.
_TERMINATORS: Final = {
    StreamDialect.NDJSON: (b'{"error"', b'"status":"success"'),  # besides the "done":true line
    StreamDialect.OPENAI: (b"data: [DONE]", b'data: {"error"'),
    StreamDialect.RESPONSES: (
        b"event: response.completed",
        b"event: response.failed",
        b"event: response.incomplete",
        b"event: error",
    ),
    StreamDialect.ANTHROPIC: (b"event: message_stop", b"event: error"),
}


__all__ = ["StreamWatch"]
