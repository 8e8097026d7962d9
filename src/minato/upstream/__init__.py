"""Everything Minato knows about talking to Ollama."""

from minato.upstream.client import ChunkStream, ModelFacts, OllamaClient, PullStream
from minato.upstream.names import canonical_model_name

__all__ = ["ChunkStream", "ModelFacts", "OllamaClient", "PullStream", "canonical_model_name"]
