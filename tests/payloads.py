"""Canned Ollama wire bodies, byte-for-byte in Ollama's compact style."""

from __future__ import annotations

from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


def ndjson(*objects: dict[str, Any]) -> bytes:
    """Join objects as Ollama streams them: compact JSON, one per line, each ending in ``\\n``."""
    return b"".join(_encode(obj) + b"\n" for obj in objects)


def chat_token(content: str, model: str = "llama3.2") -> dict[str, Any]:
    """One streamed ``/api/chat`` token line."""
    return {
        "model": model,
        "created_at": "2025-07-07T20:22:19.1Z",
        "message": {"role": "assistant", "content": content},
        "done": False,
    }


def chat_done(model: str = "llama3.2", *, eval_count: int = 2, done_reason: str = "stop") -> dict[str, Any]:
    """The final streamed ``/api/chat`` line with Ollama's metrics (nanoseconds)."""
    return {
        "model": model,
        "created_at": "2025-07-07T20:22:19.3Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": done_reason,
        "total_duration": 182242375,
        "load_duration": 41295167,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 24573166,
        "eval_count": eval_count,
        "eval_duration": 115959084,
    }


def chat_answer(content: str = "Hello there", model: str = "llama3.2") -> dict[str, Any]:
    """A whole non-streamed ``/api/chat`` answer."""
    return {**chat_done(model, eval_count=3), "message": {"role": "assistant", "content": content}}


TAGS: dict[str, Any] = {
    "models": [
        {
            "name": "llama3.2:latest",
            "model": "llama3.2:latest",
            "modified_at": "2025-05-04T17:37:44.706015396-07:00",
            "size": 2019393189,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
            "capabilities": ["completion", "tools"],
        }
    ]
}


def show(capabilities: list[str]) -> dict[str, Any]:
    """An ``/api/show`` answer with the given capabilities."""
    return {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": TAGS["models"][0]["details"],
        "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
        "capabilities": capabilities,
        "modified_at": "2025-05-04T17:37:44.706015396-07:00",
    }


def not_found(model: str) -> dict[str, str]:
    """Ollama's 404 body for a model it does not have."""
    return {"error": f"model '{model}' not found"}


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 32
