"""Wire shapes of Minato's own API (what clients receive); all immutable and keyword-only."""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from minato.upstream.wire import ChatChunk


class GenerationStats(msgspec.Struct, frozen=True, kw_only=True):
    """Ollama's counters for one answer; durations are in nanoseconds, as Ollama reports them."""

    eval_count: int = 0
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    tokens_per_second: float = 0.0

    @classmethod
    def from_chunk(cls, chunk: ChatChunk) -> GenerationStats:
        """Take the counters off Ollama's final chunk."""
        rate = chunk.eval_count / (chunk.eval_duration / 1e9) if chunk.eval_duration else 0.0
        return cls(
            eval_count=chunk.eval_count,
            prompt_eval_count=chunk.prompt_eval_count,
            total_duration=chunk.total_duration,
            load_duration=chunk.load_duration,
            prompt_eval_duration=chunk.prompt_eval_duration,
            eval_duration=chunk.eval_duration,
            tokens_per_second=round(rate, 2),
        )


class GenerateResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A whole answer (with the model's thinking, when it thought aloud)."""

    response: str
    model: str
    done_reason: str
    stats: GenerationStats
    thinking: str | UnsetType = UNSET


class StreamToken(msgspec.Struct, frozen=True, kw_only=True):
    """One token of a structured (NDJSON or SSE) stream."""

    token: str


class StreamDone(msgspec.Struct, frozen=True, kw_only=True):
    """Last event of a structured stream."""

    done: bool = True
    model: str
    done_reason: str
    stats: GenerationStats


class StreamError(msgspec.Struct, frozen=True, kw_only=True):
    """Last event of a structured stream that failed after it started."""

    error: str
    done: bool = True


class InstallResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A finished pull."""

    status: str
    model: str


class InstallProgress(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One progress line of a streamed pull, relayed as Ollama sends it plus a percentage."""

    status: str
    digest: str | UnsetType = UNSET
    total: int | UnsetType = UNSET
    completed: int | UnsetType = UNSET
    percent: float | UnsetType = UNSET
    error: str | UnsetType = UNSET


class ModelSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One installed model."""

    name: str
    size: int
    size_mb: float
    modified_at: str
    digest: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    loaded: bool
    """Whether the model is loaded in memory right now."""


class ModelsList(msgspec.Struct, frozen=True, kw_only=True):
    """Installed models."""

    models_list: list[ModelSummary]


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """Liveness: the process answers."""

    status: str = "ok"


class ReadinessReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Readiness: whether Ollama answers, and its version."""

    status: str
    ollama_url: str
    ollama_version: str | UnsetType = UNSET
    reason: str | UnsetType = UNSET
