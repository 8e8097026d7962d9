"""Everything Minato knows about talking to Ollama: the interface callers depend on, and its implementation."""

from minato.upstream.client import ChunkStream, ModelFacts, OllamaClient, PullStream, RawResponse
from minato.upstream.names import canonical_model_name
from minato.upstream.protocol import Ollama

__all__ = [
    "ChunkStream",
    "ModelFacts",
    "Ollama",
    "OllamaClient",
    "PullStream",
    "RawResponse",
    "canonical_model_name",
]
