"""The token counts a door's answer carries, in each dialect: Ollama's own (``eval_count``,
``prompt_eval_count``), OpenAI's ``usage`` and Anthropic's, and the Responses API's inside ``response``.
Read as the answer passes through the relay, for the metrics, the quota and the usage ledger."""

from __future__ import annotations

from typing import Final

import msgspec

from minato.web.rendering import StreamDialect


class _Counts(msgspec.Struct):
    completion_tokens: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    input_tokens: int = 0


class _Response(msgspec.Struct):
    usage: _Counts | None = None


class Counted(msgspec.Struct):
    """The token counts an answer or a frame may carry.

    Ollama's own answers carry ``eval_count`` (and ``response`` is then generate's text); the OpenAI
    and Anthropic ones carry ``usage``, the Responses API's inside ``response``: one decoder each,
    since the same field name holds a string in one dialect and an object in another.
    """

    eval_count: int = 0
    eval_duration: int = 0
    prompt_eval_count: int = 0
    usage: _Counts | None = None
    response: _Response | None = None

    def _usage(self) -> _Counts | None:
        return self.usage or (self.response.usage if self.response is not None else None)

    def tokens(self) -> int:
        """The answer's generated tokens (0: not said)."""
        if self.eval_count:
            return self.eval_count
        usage = self._usage()
        return (usage.completion_tokens or usage.output_tokens) if usage is not None else 0

    def prompt(self) -> int:
        """The prompt's tokens (Ollama's ``prompt_eval_count``, whatever the dialect calls it)."""
        if self.prompt_eval_count:
            return self.prompt_eval_count
        usage = self._usage()
        return (usage.prompt_tokens or usage.input_tokens) if usage is not None else 0


class _NativeCounted(msgspec.Struct):
    eval_count: int = 0
    eval_duration: int = 0
    prompt_eval_count: int = 0


_NATIVE_DECODE: Final = msgspec.json.Decoder(_NativeCounted).decode
_DOOR_DECODE: Final = msgspec.json.Decoder(Counted).decode


def counts_of(data: bytes, dialect: StreamDialect) -> Counted | None:
    """The counts of an answer or a frame in ``dialect`` (``None``: not JSON this reads)."""
    try:
        if dialect is StreamDialect.NDJSON:
            native = _NATIVE_DECODE(data)
            return Counted(native.eval_count, native.eval_duration, native.prompt_eval_count)
        return _DOOR_DECODE(data)
    except msgspec.DecodeError:
        return None


def per_second(tokens: int, nanoseconds: int) -> float:
    """Ollama's speed: ``tokens`` in ``nanoseconds`` (0 when either is unknown)."""
    return tokens / (nanoseconds / 1e9) if tokens and nanoseconds > 0 else 0.0


__all__ = ["Counted", "counts_of", "per_second"]
