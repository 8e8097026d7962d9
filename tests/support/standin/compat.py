"""Ollama's compatibility front doors: OpenAI ``/v1/*`` and Anthropic ``/v1/messages``.

Ollama implements them as gin middleware around its native handlers (ollama fb30760:
``middleware/openai.go``, ``openai/openai.go``, ``middleware/anthropic.go``, ``anthropic/anthropic.go``):
the request is translated into a native body, the native handler runs, and a wrapping writer turns each
native answer (an error body, a whole object, or one NDJSON stream object) into the compatible shape.
The stand-in does the same: ``to_native_*`` build the native body, and the writers here convert the
stand-in's own native objects, so every scripted behaviour of ``/api/chat`` and ``/api/generate``
(pacing, failures, hangs) shows up on the front doors exactly as Ollama's writers would render it.
"""

from __future__ import annotations

import base64
import os
import random
import struct
import time
from datetime import datetime
from typing import Any, Final

from tests.support.standin.gowire import dumps

__all__ = [
    "AnthropicWriter",
    "ChatWriter",
    "CompatError",
    "CompleteWriter",
    "Writer",
    "anthropic_error",
    "embedding_list",
    "openai_error",
    "to_native_anthropic",
    "to_native_chat",
    "to_native_completion",
]

EVENT_STREAM: Final = "text/event-stream"
#: What the middleware writers set before encoding (overriding gin's ``; charset=utf-8``).
PLAIN_JSON: Final = "application/json"
_DONE: Final = b"data: [DONE]\n\n"


class CompatError(Exception):
    """A middleware-level rejection: ``c.AbortWithStatusJSON`` (gin JSON, no trailing newline)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def openai_error(status: int, message: str) -> dict[str, Any]:
    """``openai.NewError`` (openai/openai.go:225-237): the type by status, param and code null."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """``anthropic.NewError`` (anthropic/anthropic.go:38-63), with its random ``req_<24 hex>`` id."""
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_" + os.urandom(12).hex(),
    }


def _unix(stamp: str | None) -> int:
    """``time.Time.Unix()`` of a native ``created_at``; now for the zero time (a bare error object)."""
    if not stamp:
        return int(time.time())
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def _usage(obj: dict[str, Any]) -> dict[str, int]:
    prompt = int(obj.get("prompt_eval_count", 0))
    completion = int(obj.get("eval_count", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``openai.ToToolCalls``: arguments re-marshalled to a JSON string, index from the function."""
    out = []
    for call in calls or []:
        fn = call.get("function", {})
        out.append(
            {
                "id": call.get("id", ""),
                "index": fn.get("index", 0),
                "type": "function",
                "function": {"name": fn.get("name", ""), "arguments": dumps(fn.get("arguments", {})).decode()},
            }
        )
    return out


def _sse(obj: object) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _event(name: str, obj: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


class Writer:
    """One request's converter from native answers to a front door's shape."""

    stream: bool = False

    def error_body(self, status: int, message: str) -> bytes:
        """``writeError``: the native ``{"error": msg}`` re-encoded (json.Encoder: trailing newline)."""
        raise NotImplementedError

    def whole(self, obj: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def frames(self, obj: dict[str, Any]) -> bytes:
        """What the writer puts on the wire for one native stream object (possibly nothing)."""
        raise NotImplementedError

    def flushes(self, obj: dict[str, Any]) -> list[bytes]:
        """``frames`` as the writes the middleware flushes one by one."""
        frames = self.frames(obj)
        return [frames] if frames else []


# --------------------------------------------------------------------------- OpenAI chat


class ChatWriter(Writer):
    """``middleware.ChatWriter`` (middleware/openai.go:80-172)."""

    def __init__(self, *, stream: bool, include_usage: bool) -> None:
        self.stream = stream
        self.include_usage = include_usage
        self.id = f"chatcmpl-{random.randrange(999)}"  # rand.Intn(999): not unique, as in Ollama
        self.created: int | None = None
        self.first_sent = False
        self.tool_call_sent = False

    def error_body(self, status: int, message: str) -> bytes:
        return dumps(openai_error(status, message)) + b"\n"

    def whole(self, obj: dict[str, Any]) -> bytes:
        """``openai.ToChatCompletion`` (openai/openai.go:269-299)."""
        msg = obj.get("message", {})
        calls = _tool_calls(msg.get("tool_calls"))
        message: dict[str, Any] = {"role": msg.get("role", ""), "content": msg.get("content", "")}
        if msg.get("thinking"):
            message["reasoning"] = msg["thinking"]
        if calls:
            message["tool_calls"] = calls
        reason = obj.get("done_reason") or None
        if reason == "stop" and calls:
            reason = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": reason}
        completion = {
            "id": self.id,
            "object": "chat.completion",
            "created": _unix(obj.get("created_at")),
            "model": obj.get("model", ""),
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
            "usage": _usage(obj),
        }
        return dumps(completion) + b"\n"

    def _chunk(self, obj: dict[str, Any], delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": obj.get("model", ""),
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }

    def frames(self, obj: dict[str, Any]) -> bytes:
        # An error object decodes as a zero ChatResponse: zero time (so "now"), no model, not done.
        if self.created is None:
            self.created = _unix(obj.get("created_at"))
        msg = obj.get("message", {})
        content = msg.get("content", "")
        thinking = msg.get("thinking", "")
        calls = _tool_calls(msg.get("tool_calls"))
        done = bool(obj.get("done"))
        out = b""
        if not (done and self.first_sent and not content and not thinking and not calls):
            role = {} if self.first_sent else {"role": "assistant"}
            if thinking and (content or calls):
                # ToStreamChunks splits a mixed response: reasoning first, then content/tool calls.
                out += _sse(self._chunk(obj, {**role, "reasoning": thinking}, None))
                rest: dict[str, Any] = {"content": content}
                if calls:
                    rest["tool_calls"] = calls
                out += _sse(self._chunk(obj, rest, None))
            else:
                delta: dict[str, Any] = {**role, "content": content}
                if thinking:
                    delta["reasoning"] = thinking
                if calls:
                    delta["tool_calls"] = calls
                out += _sse(self._chunk(obj, delta, None))
            self.tool_call_sent = self.tool_call_sent or bool(calls)
            self.first_sent = True
        if done:
            reason = obj.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk(obj, {}, reason)
            out += _sse(finish)
            if self.include_usage:
                finish["choices"] = []
                finish["usage"] = _usage(obj)
                out += _sse(finish)
            out += _DONE
        return out


# --------------------------------------------------------------------------- OpenAI completions


class CompleteWriter(Writer):
    """``middleware.CompleteWriter`` (middleware/openai.go:185-249)."""

    def __init__(self, *, stream: bool, include_usage: bool) -> None:
        self.stream = stream
        self.include_usage = include_usage
        self.id = f"cmpl-{random.randrange(999)}"

    def error_body(self, status: int, message: str) -> bytes:
        return dumps(openai_error(status, message)) + b"\n"

    @staticmethod
    def _choice(obj: dict[str, Any]) -> dict[str, Any]:
        return {"text": obj.get("response", ""), "index": 0, "finish_reason": obj.get("done_reason") or None}

    def whole(self, obj: dict[str, Any]) -> bytes:
        """``openai.ToCompletion`` (openai/openai.go)."""
        completion = {
            "id": self.id,
            "object": "text_completion",
            "created": _unix(obj.get("created_at")),
            "model": obj.get("model", ""),
            "system_fingerprint": "fp_ollama",
            "choices": [self._choice(obj)],
            "usage": _usage(obj),
        }
        return dumps(completion) + b"\n"

    def frames(self, obj: dict[str, Any]) -> bytes:
        # ToCompleteChunk stamps time.Now() and puts choices before model; every chunk of a stream with
        # include_usage carries a zero usage object.
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [self._choice(obj)],
            "model": obj.get("model", ""),
            "system_fingerprint": "fp_ollama",
        }
        if self.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = _sse(chunk)
        if obj.get("done"):
            if self.include_usage:
                chunk["usage"] = _usage(obj)
                chunk["choices"] = []
                out += _sse(chunk)
            out += _DONE
        return out


# --------------------------------------------------------------------------- OpenAI embeddings


def embedding_list(model: str, native: dict[str, Any], encoding: str) -> bytes:
    """``openai.ToEmbeddingList``: float32 little-endian bytes for ``base64``."""
    vectors = native.get("embeddings")
    if vectors is None:
        empty = {"object": "", "data": None, "model": "", "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        return dumps(empty) + b"\n"
    data = []
    for i, vec in enumerate(vectors):
        value: Any = vec
        if encoding.lower() == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    tokens = int(native.get("prompt_eval_count", 0))
    out = {
        "object": "list",
        "data": data or None,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return dumps(out) + b"\n"


# --------------------------------------------------------------------------- Anthropic


def _stop_reason(reason: str, tools: bool) -> str:
    """``mapStopReason`` (anthropic/anthropic.go:699-716)."""
    if tools:
        return "tool_use"
    if reason == "stop":
        return "end_turn"
    if reason == "length":
        return "max_tokens"
    return "stop_sequence" if reason else ""


class AnthropicWriter(Writer):
    """``middleware.AnthropicWriter`` + ``anthropic.StreamConverter`` (anthropic/anthropic.go:718-980)."""

    def __init__(self, *, stream: bool, model: str, estimated_tokens: int) -> None:
        self.stream = stream
        self.model = model
        self.id = "msg_" + os.urandom(12).hex()
        self.estimated = estimated_tokens
        self.first = True
        self.index = 0
        self.thinking_started = False
        self.thinking_done = False
        self.text_started = False
        self.tools_sent: set[str] = set()

    def error_body(self, status: int, message: str) -> bytes:
        return dumps(anthropic_error(status, message)) + b"\n"

    def whole(self, obj: dict[str, Any]) -> bytes:
        """``ToMessagesResponse`` (anthropic/anthropic.go:656-697); no blocks marshals as ``null``."""
        msg = obj.get("message", {})
        content: list[dict[str, Any]] = []
        if msg.get("thinking"):
            content.append({"type": "thinking", "thinking": msg["thinking"]})
        if msg.get("content"):
            content.append({"type": "text", "text": msg["content"]})
        calls = msg.get("tool_calls") or []
        for call in calls:
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id", "")}
            block["name"] = call["function"]["name"]
            block["input"] = call["function"].get("arguments", {})
            content.append(block)
        out: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": obj.get("model", ""),
            "content": content or None,
        }
        reason = _stop_reason(obj.get("done_reason", ""), bool(calls))
        if reason:
            out["stop_reason"] = reason
        out["usage"] = {
            "input_tokens": int(obj.get("prompt_eval_count", 0)),
            "output_tokens": int(obj.get("eval_count", 0)),
        }
        return dumps(out) + b"\n"

    def _stop(self) -> bytes:
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _start(self, block: dict[str, Any]) -> bytes:
        event = {"type": "content_block_start", "index": self.index, "content_block": block}
        return _event("content_block_start", event)

    def frames(self, obj: dict[str, Any]) -> bytes:
        out = b""
        if self.first:
            self.first = False
            tokens = int(obj.get("prompt_eval_count", 0)) or self.estimated
            start = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {"input_tokens": tokens, "output_tokens": 0},
            }
            out += _event("message_start", {"type": "message_start", "message": start})
        msg = obj.get("message", {})
        thinking = msg.get("thinking", "")
        content = msg.get("content", "")
        if thinking and not self.thinking_done:
            if self.text_started:
                out += self._stop()
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                out += self._start({"type": "thinking", "thinking": ""})
            out += self._delta({"type": "thinking_delta", "thinking": thinking})
        if content:
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                out += self._stop()
                self.index += 1
            if not self.text_started:
                self.text_started = True
                out += self._start({"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": content})
        for call in msg.get("tool_calls") or []:
            call_id = call.get("id", "")
            if call_id in self.tools_sent:
                continue
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                out += self._stop()
                self.index += 1
            if self.text_started:
                out += self._stop()
                self.index += 1
                self.text_started = False
            fn = call["function"]
            out += self._start({"type": "tool_use", "id": call_id, "name": fn["name"], "input": {}})
            out += self._delta({"type": "input_json_delta", "partial_json": dumps(fn.get("arguments", {})).decode()})
            out += self._stop()
            self.tools_sent.add(call_id)
            self.index += 1
        if obj.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                out += self._stop()
            usage = {
                "input_tokens": int(obj.get("prompt_eval_count", 0)),
                "output_tokens": int(obj.get("eval_count", 0)),
            }
            delta: dict[str, Any] = {}
            reason = _stop_reason(obj.get("done_reason", ""), bool(self.tools_sent))
            if reason:
                delta["stop_reason"] = reason
            out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            out += _event("message_stop", {"type": "message_stop"})
        return out


# --------------------------------------------------------------------------- request translation


def _text_of(content: Any) -> tuple[str, list[str]]:
    """Text and base64 images of an OpenAI or Anthropic message content (string or parts)."""
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = part.get("image_url", {})
            url = url.get("url", "") if isinstance(url, dict) else str(url)
            if not url.startswith("data:"):
                raise CompatError(400, "image URLs are not currently supported, please use base64 encoded data instead")
            images.append(url.partition(",")[2])
        elif part.get("type") == "image":
            images.append(str((part.get("source") or {}).get("data", "")))
        elif part.get("type") == "tool_result":
            inner = part.get("content")
            texts.append(_text_of(inner)[0] if inner is not None else "")
    return "".join(texts), images


def _stop_option(stop: Any) -> list[str] | None:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [str(s) for s in stop]
    return None


def to_native_chat(req: dict[str, Any]) -> dict[str, Any]:
    """``openai.FromChatRequest``: the parts the stand-in acts on; sampling options as Ollama sets them."""
    messages = []
    for msg in req.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        text, images = _text_of(msg.get("content"))
        native: dict[str, Any] = {"role": msg.get("role", ""), "content": text}
        if images:
            native["images"] = images
        messages.append(native)
    options: dict[str, Any] = {}
    if (stop := _stop_option(req.get("stop"))) is not None:
        options["stop"] = stop
    if req.get("max_tokens") is not None:
        options["num_predict"] = req["max_tokens"]
    options["temperature"] = req.get("temperature") if req.get("temperature") is not None else 1.0
    if req.get("seed") is not None:
        options["seed"] = req["seed"]
    options["top_p"] = req.get("top_p") if req.get("top_p") is not None else 1.0
    body: dict[str, Any] = {"model": req.get("model", ""), "messages": messages, "options": options}
    body["stream"] = bool(req.get("stream"))
    if req.get("tools"):
        body["tools"] = req["tools"]
    effort = req.get("reasoning_effort") or (req.get("reasoning") or {}).get("effort")
    if effort:
        mapped = {"none": False, "minimal": "low", "xhigh": "max", "ultra": "max"}.get(effort, effort)
        if mapped not in (False, "low", "medium", "high", "max"):
            raise CompatError(
                400,
                f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                '"xhigh", "ultra", "max", or "none")',
            )
        body["think"] = mapped
    return body


def to_native_completion(req: dict[str, Any]) -> dict[str, Any]:
    """``openai.FromCompleteRequest``: prompt, suffix, num_predict, stop, temperature."""
    options: dict[str, Any] = {}
    if (stop := _stop_option(req.get("stop"))) is not None:
        options["stop"] = stop
    if req.get("max_tokens") is not None:
        options["num_predict"] = req["max_tokens"]
    if req.get("temperature") is not None:
        options["temperature"] = req["temperature"]
    body: dict[str, Any] = {"model": req.get("model", ""), "prompt": req.get("prompt", ""), "options": options}
    if req.get("suffix"):
        body["suffix"] = req["suffix"]
    body["stream"] = bool(req.get("stream"))
    return body


def to_native_anthropic(req: dict[str, Any]) -> dict[str, Any]:
    """``anthropic.FromMessagesRequest``: num_predict is always max_tokens; tools become functions."""
    messages: list[dict[str, Any]] = []
    system = req.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system)[0]})
    for msg in req.get("messages") or []:
        if isinstance(msg, dict):
            text, images = _text_of(msg.get("content"))
            native: dict[str, Any] = {"role": msg.get("role", ""), "content": text}
            if images:
                native["images"] = images
            messages.append(native)
    options: dict[str, Any] = {"num_predict": req.get("max_tokens")}
    for key, native_key in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if req.get(key) is not None:
            options[native_key] = req[key]
    if req.get("stop_sequences"):
        options["stop"] = req["stop_sequences"]
    body: dict[str, Any] = {"model": req.get("model", ""), "messages": messages, "options": options}
    body["stream"] = bool(req.get("stream"))
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.get("name", ""),
                "description": t.get("description", ""),
                "parameters": t.get("input_schema") or {},
            },
        }
        for t in req.get("tools") or []
        if isinstance(t, dict)
    ]
    if tools:
        body["tools"] = tools
    thinking = req.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        body["think"] = thinking["type"] == "enabled"
    return body


def estimate_anthropic_tokens(req: dict[str, Any]) -> int:
    """``EstimateInputTokens``: a quarter of the characters, at least 1 when there are messages."""
    total = len(_text_of(req.get("system"))[0]) if req.get("system") is not None else 0
    for msg in req.get("messages") or []:
        if isinstance(msg, dict):
            total += len(str(msg.get("role", ""))) + len(_text_of(msg.get("content"))[0])
    for tool in req.get("tools") or []:
        if isinstance(tool, dict):
            total += len(tool.get("name", "")) + len(tool.get("description", ""))
            total += len(dumps(tool.get("input_schema") or {}))
    tokens = total // 4
    if tokens == 0 and (req.get("messages") or req.get("system") is not None):
        tokens = 1
    return tokens
