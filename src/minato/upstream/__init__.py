"""Everything Minato knows about talking to Ollama."""

from minato.upstream.client import ChunkStream, OllamaClient, PullStream, canonical_model_name

__all__ = ["ChunkStream", "OllamaClient", "PullStream", "canonical_model_name"]
