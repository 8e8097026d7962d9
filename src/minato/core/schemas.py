"""Wire shapes of Minato's own API (what clients receive); all immutable and keyword-only."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Final

import msgspec
from msgspec import UNSET, UnsetType

from minato.ollama.wire import ChatChunk, ModelDetails, RunningModel
from minato.state.conversations import Session, SessionAddress
from minato.upstream.ports import BackendStatus


def families_of(details: ModelDetails) -> list[str]:
    """A model's families; older models list none, and then their one family is all of them."""
    return details.families or ([details.family] if details.family else [])


class GenerationStats(msgspec.Struct, frozen=True, kw_only=True):
    """Ollama's counters for one answer; durations are in nanoseconds, as Ollama reports them."""

    eval_count: int = 0
    """Tokens generated."""
    prompt_eval_count: int = 0
    """Tokens of the prompt Ollama evaluated."""
    total_duration: int = 0
    """The whole request, on Ollama's side (the model's load included)."""
    load_duration: int = 0
    """Loading the model (near zero when it was loaded already)."""
    prompt_eval_duration: int = 0
    """Evaluating the prompt."""
    eval_duration: int = 0
    """Generating the answer."""
    tokens_per_second: float = 0.0
    """``eval_count`` over ``eval_duration``, rounded to two decimals."""

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
    backend: str | UnsetType = UNSET
    """The backend (``host:port``) the line is about, with a pool of backends."""


#: What ``capabilities`` says in ``/models_list/`` (also in the OpenAPI document).
MODEL_CAPABILITIES: Final = (
    "What the model can do, as Ollama says (`completion`, `embedding`, `vision`, `tools`, `thinking`, "
    "`insert`, ...): a model without `completion` (an embedding model) cannot chat or generate. "
    "Empty when Ollama could not say."
)


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
    backends: list[str]
    """The backends (``host:port``) that have it."""
    capabilities: Annotated[list[str], msgspec.Meta(description=MODEL_CAPABILITIES)]


class ModelsList(msgspec.Struct, frozen=True, kw_only=True):
    """Installed models."""

    models_list: list[ModelSummary]


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """Liveness: the process answers."""

    status: str = "ok"


class StateReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where the state behind the guarantees (conversations, turns, limits) is kept, and whether it answers."""

    name: str
    """``memory`` (this process), ``sqlite`` (the workers of this machine) or ``redis`` (every replica)."""
    status: str
    """``up`` or ``down``."""
    reason: str | UnsetType = UNSET


class ReadinessReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Readiness: whether a backend answers (with the first one's version), every backend's state, and
    whether the shared state answers."""

    status: str
    ollama_url: str
    ollama_version: str | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    backends: list[BackendStatus] = msgspec.field(default_factory=list)
    state: StateReport | UnsetType = UNSET


# -- model lifecycle and server info ---------------------------------------------------------------


#: The Ollama CLI shows "Forever" for expiries more than 20 years out; so does Minato.
FOREVER_AFTER: Final = datetime.timedelta(days=20 * 365)
_GO_FRACTION: Final = re.compile(r"(\.\d{6})\d+")


class RunningView(msgspec.Struct, frozen=True, kw_only=True):
    """A model loaded in memory."""

    name: str
    size: int
    size_vram: int
    context_length: int
    expires_at: str
    """ISO 8601, or ``forever``."""
    expires_in_seconds: float | None
    """Seconds until Ollama unloads it; ``null`` when it stays loaded forever."""
    backend: str
    """The backend (``host:port``) it is loaded on."""

    @classmethod
    def of(cls, model: RunningModel) -> RunningView:
        """Present one ``/api/ps`` entry, with "forever" spelled out instead of year 2318."""
        expires_at, remaining = expiry(model.expires_at)
        return cls(
            name=model.name or model.model,
            size=model.size,
            size_vram=model.size_vram,
            context_length=model.context_length,
            expires_at=expires_at,
            expires_in_seconds=remaining,
            backend=model.backend,
        )


class RunningList(msgspec.Struct, frozen=True, kw_only=True):
    """Models loaded in memory now."""

    running: list[RunningView]


class ModelAction(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of an unload or delete."""

    status: str
    model: str


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """A load: whether the model is in memory now, and its running status."""

    model: str
    loaded: bool
    running: RunningView | None
    backend: str
    """The backend (``host:port``) it was loaded on."""


class DetailsView(msgspec.Struct, frozen=True, kw_only=True):
    """A model's format and family."""

    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str

    @classmethod
    def of(cls, details: ModelDetails) -> DetailsView:
        """Present Ollama's details."""
        families = families_of(details)
        return cls(
            format=details.format,
            family=details.family,
            families=families,
            parameter_size=details.parameter_size,
            quantization_level=details.quantization_level,
        )


class ModelStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Everything Minato can tell about one model."""

    model: str
    installed: bool
    loaded: bool
    expires_at: str | None = None
    size: int | None = None
    details: DetailsView | UnsetType = UNSET
    capabilities: list[str] = msgspec.field(default_factory=list)
    context_length: int | None = None


class OllamaInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where Ollama is and whether it answers."""

    url: str
    reachable: bool
    version: str | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    backends: list[BackendStatus] = msgspec.field(default_factory=list)
    """Every backend of the pool and its state."""


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET /`` reports."""

    service: str
    version: str
    ollama: OllamaInfo
    installed: list[str]
    running: list[str]


def expiry(value: str) -> tuple[str, float | None]:
    if not value:
        return "", None
    try:
        moment = datetime.datetime.fromisoformat(_GO_FRACTION.sub(r"\1", value))
    except ValueError:
        return value, None
    remaining = moment - datetime.datetime.now(tz=datetime.UTC)
    if remaining > FOREVER_AFTER:
        return "forever", None
    return value, round(max(remaining.total_seconds(), 0.0), 1)


# -- conversations --------------------------------------------------------------------------------------


def iso_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat(timespec="milliseconds")


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a conversation (images are counted, not returned)."""

    role: str
    content: str
    image_count: int
    model: str | None
    timestamp: str


class SessionTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Counts over a conversation."""

    messages: int
    """Messages kept (questions and answers)."""
    turns: int
    """Questions asked (the user's messages)."""
    images: int
    """Images sent with its questions, their bytes kept or not."""
    characters: int
    """Characters of text over every message."""


class SessionView(SessionAddress, frozen=True, kw_only=True):
    """A whole conversation."""

    system_prompt: str | None
    messages: list[MessageView]
    totals: SessionTotals
    created_at: str
    """When its first turn was recorded (ISO 8601, UTC)."""
    last_active: str
    """When its last turn was recorded (ISO 8601, UTC)."""

    @classmethod
    def of(cls, session: Session) -> SessionView:
        """Present a stored session."""
        messages = session.messages
        return cls(
            owner=session.owner,
            id=session.id,
            system_prompt=session.system_prompt,
            messages=[
                MessageView(
                    role=m.role, content=m.content, image_count=m.image_count, model=m.model, timestamp=iso_time(m.at)
                )
                for m in messages
            ],
            totals=SessionTotals(
                messages=len(messages),
                turns=sum(1 for m in messages if m.role == "user"),
                images=sum(m.image_count for m in messages),
                characters=sum(len(m.content) for m in messages),
            ),
            created_at=iso_time(session.created_at),
            last_active=iso_time(session.last_active),
        )


class SessionListItem(SessionAddress, frozen=True, kw_only=True):
    """A conversation in a listing."""

    message_count: int
    """Messages it holds (questions and answers)."""
    last_active: str
    """When its last turn was recorded (ISO 8601, UTC)."""


class SessionPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of conversations, most recently active first."""

    sessions: list[SessionListItem]
    total: int
    offset: int
    limit: int


class SystemPromptBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``PUT /chat/{session}/system_prompt``."""

    system_prompt: str
