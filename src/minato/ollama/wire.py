"""Ollama's native wire shapes, only the fields Minato reads or writes.

Decoding ignores unknown fields, so newer Ollama versions that add keys keep working; every field
has a default because Ollama omits zero values (``omitempty``) and error lines carry only ``error``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class WireMessage(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One chat message sent to ``/api/chat``."""

    role: str
    content: str = ""
    images: list[str] = msgspec.field(default_factory=list)


class ChatRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Body of ``POST /api/chat``; unset fields are left out so Ollama's defaults apply."""

    model: str
    messages: list[WireMessage]
    stream: bool
    options: dict[str, Any] | UnsetType = UNSET
    keep_alive: float | str | UnsetType = UNSET
    format: str | UnsetType = UNSET
    think: bool | UnsetType = UNSET


class ChunkMessage(msgspec.Struct):
    """The ``message`` of a chat chunk."""

    role: str = "assistant"
    content: str = ""
    thinking: str = ""


class ChatChunk(msgspec.Struct):
    """One NDJSON line of ``/api/chat`` (or its whole non-streamed answer, or an error line)."""

    model: str = ""
    message: ChunkMessage = msgspec.field(default_factory=ChunkMessage)
    done: bool = False
    done_reason: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    error: str = ""
    backend: str = ""
    """Which backend of a pool answered a whole answer (set by Minato, never sent by Ollama)."""


class PullRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /api/pull``."""

    model: str
    stream: bool = True


class PullProgress(msgspec.Struct, omit_defaults=True):
    """One NDJSON line of ``/api/pull``."""

    status: str = ""
    """What Ollama is doing (``pulling manifest``, ``pulling <digest>``, ``success``...)."""
    digest: str = ""
    """The layer being downloaded, while one is."""
    total: int = 0
    """That layer's size in bytes."""
    completed: int = 0
    """Its bytes downloaded so far."""
    error: str = ""
    backend: str = ""
    """Which backend of a pool the line is about (set by Minato, never sent by Ollama)."""


class ModelDetails(msgspec.Struct):
    """``details`` of a model in ``/api/tags`` and ``/api/show``."""

    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class TagModel(msgspec.Struct):
    """One installed model in ``/api/tags``."""

    name: str = ""
    model: str = ""
    modified_at: str = ""
    size: int = 0
    digest: str = ""
    details: ModelDetails = msgspec.field(default_factory=ModelDetails)
    capabilities: list[str] = msgspec.field(default_factory=list)
    """What the model can do; Ollama lists it here since 0.30 (older versions only in ``/api/show``)."""


class TagsResponse(msgspec.Struct):
    """Answer of ``GET /api/tags``."""

    models: list[TagModel] = msgspec.field(default_factory=list)


class ShowRequest(msgspec.Struct):
    """Body of ``POST /api/show``."""

    model: str


class ShowResponse(msgspec.Struct):
    """The parts of ``/api/show`` Minato uses."""

    capabilities: list[str] = msgspec.field(default_factory=list)
    details: ModelDetails = msgspec.field(default_factory=ModelDetails)
    model_info: dict[str, Any] | None = None


class VersionResponse(msgspec.Struct):
    """Answer of ``GET /api/version``."""

    version: str = ""


class ErrorBody(msgspec.Struct):
    """Ollama's error envelope ``{"error": "..."}``."""

    error: Any = ""


class LoadRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Body of ``POST /api/generate`` without a prompt: Ollama loads (or, with 0, unloads) the model."""

    model: str
    stream: bool  # always sent: Ollama streams when it is absent
    keep_alive: float | str | UnsetType = UNSET
    options: dict[str, Any] | UnsetType = UNSET


class DeleteRequest(msgspec.Struct):
    """Body of ``DELETE /api/delete``."""

    model: str


class RunningModel(msgspec.Struct):
    """One loaded model in ``/api/ps``."""

    name: str = ""
    model: str = ""
    size: int = 0
    digest: str = ""
    details: ModelDetails = msgspec.field(default_factory=ModelDetails)
    expires_at: str = ""
    size_vram: int = 0
    context_length: int = 0
    backend: str = ""
    """Which backend of a pool holds it (set by Minato, never sent by Ollama)."""


class PsResponse(msgspec.Struct):
    """Answer of ``GET /api/ps``."""

    models: list[RunningModel] = msgspec.field(default_factory=list)
