"""Canned Ollama wire bodies, byte-for-byte in Ollama's compact style."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
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


#: What the mocked Ollama has installed unless a test says otherwise.
INSTALLED: tuple[str, ...] = (
    "llama3.2:latest",
    "llama3.2:1b",
    "gemma3:latest",
    "qwen3:latest",
    "qwen3:0.6b",
    "llava:latest",
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
)


def catalogue(*names: str) -> dict[str, Any]:
    """An ``/api/tags`` answer listing ``names`` (with the details of the first canned model)."""
    entry = TAGS["models"][0]
    return {"models": [{**entry, "name": name, "model": name} for name in names]}


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


# -- helpers for the unit suite (appended) ---------------------------------------------------------

GIF_HEADER = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 16
WEBP_HEADER = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 24
BMP_HEADER = b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00" + b"\x00" * 24


def pull_progress(digest: str = "dde5aa3fc5ff", *, total: int = 200, completed: int = 0) -> dict[str, Any]:
    """One ``/api/pull`` per-blob progress line (``completed`` omitted while 0, as Ollama does)."""
    line: dict[str, Any] = {"status": f"pulling {digest}", "digest": f"sha256:{digest}", "total": total}
    if completed:
        line["completed"] = completed
    return line


PULL_MANIFEST: dict[str, Any] = {"status": "pulling manifest"}
PULL_SUCCESS: dict[str, Any] = {"status": "success"}
PULL_UNKNOWN: dict[str, Any] = {"error": "pull model manifest: file does not exist"}


class Pieces(httpx.AsyncByteStream):
    """A response body delivered in the given pieces, optionally pausing before some of them.

    ``pauses`` maps a piece's index to the seconds slept before that piece is yielded.
    """

    def __init__(self, *pieces: bytes, pauses: dict[int, float] | None = None) -> None:
        self.pieces = pieces
        self.pauses = pauses or {}
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, piece in enumerate(self.pieces):
            if index in self.pauses:
                await asyncio.sleep(self.pauses[index])
            yield piece

    async def aclose(self) -> None:
        self.closed = True


class Held(httpx.AsyncByteStream):
    """A response body sent in ``parts``: the first at once, each further one after one more :meth:`release`.

    On a socket, pieces written back to back may arrive in one read; holding the next part back until
    the test has seen what Minato made of the ones before keeps a boundary the test depends on.
    """

    def __init__(self, *parts: tuple[bytes, ...]) -> None:
        self.parts = parts
        self._releases = 0
        self._wake: Callable[[], object] | None = None

    def release(self) -> None:
        """Send the next part (callable from any thread: the server serving it runs on its own)."""
        self._releases += 1
        if self._wake is not None:
            self._wake()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        for index, part in enumerate(self.parts):
            while self._releases < index:
                go = asyncio.Event()
                self._wake = lambda go=go: loop.call_soon_threadsafe(go.set)
                if self._releases < index:  # not released before the wake-up was in place
                    await go.wait()
            for piece in part:
                yield piece


def split_every(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    """Cut ``data`` into pieces of the given sizes, cycling through them (odd byte boundaries)."""
    pieces: list[bytes] = []
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        pieces.append(data[position : position + size])
        position += size
        turn += 1
    return pieces


def streamed(*pieces: bytes, pauses: dict[int, float] | None = None, status: int = 200) -> httpx.Response:
    """An NDJSON response whose body arrives in ``pieces``."""
    return httpx.Response(
        status, headers={"content-type": "application/x-ndjson"}, stream=Pieces(*pieces, pauses=pauses)
    )
