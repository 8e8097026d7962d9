"""Everything Minato knows about talking to Ollama: the interface callers depend on, and its implementation."""

from minato.upstream.client import ModelFacts, OllamaClient
from minato.upstream.names import canonical_model_name
from minato.upstream.pool import OllamaPool
from minato.upstream.protocol import BackendStatus, Ollama, Spread
from minato.upstream.streams import ChunkStream, PullProgressStream, PullStream, RawResponse

__all__ = [
    "BackendStatus",
    "ChunkStream",
    "ModelFacts",
    "Ollama",
    "OllamaClient",
    "OllamaPool",
    "PullProgressStream",
    "PullStream",
    "RawResponse",
    "Spread",
    "canonical_model_name",
]
