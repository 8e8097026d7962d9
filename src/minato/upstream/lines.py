"""Ollama's NDJSON lines as its bytes arrive: the one reader of a chat or pull stream's body.

Synchronous, so the same code serves whoever holds the bytes: the awaited streams
(:mod:`minato.upstream.streams`) feed it what each read returns, and the direct relay
(:class:`minato.core.answer.AnswerStream`) feeds it from the upstream connection's data callback.
A received chunk is split at its last newline, the complete lines are decoded together with
msgspec, and the partial last line is carried to the next chunk; what breaks the stream (an
``error`` line, a line that is not Ollama's, a body that ends before the last line) becomes
:attr:`LineReader.failure`, in Minato's sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from minato.errors import UpstreamError
from minato.ollama.wire import ChatChunk, PullProgress
from minato.upstream.failures import log_library_error

T = TypeVar("T", ChatChunk, PullProgress)
"""What a stream's lines decode to."""


class LineReader(Generic[T]):
    """Decodes one stream's lines a received chunk at a time; :attr:`failure` says why it cannot complete.

    Lines that arrive together are decoded and handed on together: relaying a batch costs one write
    instead of one per token, which keeps per-token CPU flat however fast Ollama is. Once
    :attr:`failure` is set, or the stream's last line came, the stream is over: read no further.
    """

    __slots__ = (
        "_carry",
        "_cut_short",
        "_decoder",
        "_failed",
        "_is_last",
        "cut_short",
        "error",
        "failure",
        "ollama_url",
    )

    def __init__(
        self,
        decoder: msgspec.json.Decoder[T],
        ollama_url: str,
        *,
        failed: str,
        cut_short: str,
        is_last: Callable[[T], bool],
    ) -> None:
        """``failed`` is the sentence of an ``error`` line (Ollama's error in place of ``{}``),
        ``cut_short`` that of a body that ends before the line ``is_last`` recognises."""
        self._decoder: msgspec.json.Decoder[T] = decoder
        self.ollama_url = ollama_url
        self._failed = failed
        self._cut_short = cut_short
        self._is_last: Callable[[T], bool] = is_last
        self._carry = b""
        self.failure: UpstreamError | None = None
        """Why the stream cannot complete, once the bytes fed said so."""
        self.error: str | None = None
        """Ollama's own words, when an ``error`` line is the :attr:`failure`."""
        self.cut_short = False
        """Whether the :attr:`failure` is the body's end before the last line."""

    def feed(self, chunk: bytes) -> list[T]:
        """The lines ``chunk`` completes, decoded, up to a line that is the :attr:`failure`."""
        end = chunk.rfind(b"\n")
        if end < 0:
            self._carry += chunk
            return []
        # The usual chunk is whole lines with nothing carried: it is decoded as it came, without a copy.
        lines = self._carry + chunk[: end + 1] if self._carry else chunk[: end + 1]
        self._carry = chunk[end + 1 :]
        try:
            batch = self._decoder.decode_lines(lines)
        except msgspec.DecodeError as exc:
            self.failure = _unreadable_line(exc, self.ollama_url)
            return []
        for item in batch:
            if item.error:
                # The lines before it in the same batch still count: they were Ollama's answer.
                self.error = item.error
                self.failure = UpstreamError(self._failed.format(item.error))
                del batch[batch.index(item) :]
                break
        return batch

    def end(self) -> list[T]:
        """The body ended: its unterminated last line, decoded; unless that is the stream's last line, the
        stream was cut short (:attr:`failure`). For a stream whose last line has not come yet."""
        rest, self._carry = self._carry.strip(), b""
        # Decoded as the line it would have been had Ollama ended it (once a stream: the copy is no matter).
        batch = self.feed(rest + b"\n") if rest else []
        if self.failure is None and not (batch and self._is_last(batch[-1])):
            self.cut_short = True
            self.failure = UpstreamError(self._cut_short)
        return batch


def _unreadable_line(exc: msgspec.DecodeError, ollama_url: str) -> UpstreamError:
    """Minato's sentence for a line of Ollama's stream it cannot decode; msgspec's text goes to the log."""
    log_library_error("ollama_line_unreadable", exc, ollama_url)
    if isinstance(exc, msgspec.ValidationError):
        return UpstreamError("Ollama sent a line that does not have the shape of Ollama's API")
    return UpstreamError("Ollama sent a line that is not valid JSON")


__all__ = ["LineReader"]
