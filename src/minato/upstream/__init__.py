"""Everything Minato knows about talking to Ollama: the interface callers depend on, and its implementation."""

from minato.upstream.client import ModelFacts, OllamaClient
from minato.upstream.names import canonical_model_name
from minato.upstream.protocol import Ollama
from minato.upstream.streams import ChunkStream, PullStream, RawResponse

__all__ = [
    "ChunkStream",
    "ModelFacts",
    "Ollama",
    "OllamaClient",
    "PullStream",
    "RawResponse",
    "canonical_model_name",
]
