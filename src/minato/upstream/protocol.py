"""The one narrow interface to Ollama that handlers, the generation and the catalog depend on.

:class:`~minato.upstream.client.OllamaClient` implements it against one Ollama; a pool of backends
can implement it too, and a test can fake it. Nothing above ``upstream/`` names the concrete client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from msgspec import UnsetType

if TYPE_CHECKING:
    from minato.upstream.client import ModelFacts
    from minato.upstream.streams import ChunkStream, PullStream, RawResponse
    from minato.upstream.wire import ChatChunk, ChatRequest, PsResponse, ShowResponse, TagsResponse


class Ollama(Protocol):
    """What Minato asks of Ollama. Every failure is a :mod:`minato.errors` exception, never a library's."""

    base_url: str
    """Where Ollama is (named in errors and in ``/ready``)."""

    async def aclose(self) -> None:
        """Release the connections."""

    async def chat(self, request: ChatRequest) -> ChatChunk:
        """A whole answer, with Ollama's final counters."""

    async def stream_chat(self, request: ChatRequest) -> ChunkStream:
        """A stream, returned once its first tokens arrived (so its status is known)."""

    async def pull(self, model: str) -> PullStream:
        """Start pulling; return once the manifest was found (or fail with a 404)."""

    async def load(self, model: str, keep_alive: float | str | UnsetType, options: dict[str, Any]) -> None:
        """Load a model into memory."""

    async def unload(self, model: str) -> None:
        """Unload a model now."""

    async def delete(self, model: str) -> None:
        """Delete a model from disk."""

    async def running(self) -> PsResponse:
        """The models loaded now."""

    async def list_models(self) -> TagsResponse:
        """The models installed."""

    async def show(self, model: str) -> ShowResponse:
        """One model's details."""

    async def capabilities(self, model: str) -> frozenset[str]:
        """One model's capabilities (cached)."""

    async def facts(self, model: str) -> ModelFacts:
        """What Minato needs to know of a model (cached)."""

    def forget(self, model: str) -> None:
        """Drop cached facts about a model."""

    async def version(self) -> str:
        """Ollama's version."""

    async def forward(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        content_type: str | None = None,
        headers_within: float | None = None,
        whole_within: float | None = None,
    ) -> RawResponse:
        """Relay a request as bytes: status and headers first (within ``headers_within`` seconds, by default
        ``MINATO_FIRST_TOKEN_TIMEOUT``), then the body as it arrives (all of it within ``whole_within``)."""


if TYPE_CHECKING:
    OllamaDependency: TypeAlias = Ollama
else:
    # What handlers declare: to the type checker the Protocol; at run time Any, because Litestar
    # checks every injected dependency against its declared type, and an isinstance check against a
    # Protocol costs about 17 µs a request on Python 3.11.
    OllamaDependency = Any
