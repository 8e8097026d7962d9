"""Ollama's OpenAI Responses door, ``POST /v1/responses`` (stateless: no stored responses).

As in Ollama (fb30760: ``middleware/openai.go`` ``ResponsesMiddleware``/``ResponsesWriter``,
``openai/responses.go`` ``FromResponsesRequest``/``ToResponse``/``ResponsesStreamConverter``): the
request becomes a native chat body, and each native answer is rewritten. A whole answer is the
``ResponsesResponse`` struct (fields in declaration order); every stream event is a ``map[string]any``,
which Go marshals with its keys sorted, framed as ``event: <type>\\ndata: <json>\\n\\n`` and flushed.
The built-in ``web_search`` tool (which calls ollama.com) is not emulated.
"""

from __future__ import annotations

import base64
import binascii
import random
import time
from typing import Any, Final

import msgspec
import zstandard

from tests.support.standin.compat import CompatError, Writer, _tool_calls, _unix, openai_error
from tests.support.standin.gowire import DecodeError, decode_json_body, dumps, dumps_map, go_kind

__all__ = ["ResponsesWriter", "UnsupportedToolError", "check_types", "to_native_responses", "unzstd"]

#: ``zstd.WithDecoderMaxMemory(8<<20)``: a streaming decoder's largest window.
_ZSTD_WINDOW: Final = 8 << 20
#: ``maxDecompressedBodySize``, enforced by ``http.MaxBytesReader`` over the decoder.
_MAX_DECODED: Final = 20 << 20

_GO_TYPES: Final = {
    "model": "string",
    "instructions": "string",
    "stream": "bool",
    "background": "bool",
    "max_output_tokens": "int",
    "temperature": "float64",
    "top_p": "float64",
    "truncation": "string",
}
_IMAGE_PREFIXES: Final = tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))


class UnsupportedToolError(Exception):
    """A tool the stand-in cannot run (Ollama's built-in ``web_search``)."""


def unzstd(raw: bytes) -> bytes:
    """The middleware's zstd reader: a decoding failure surfaces as the JSON decoder's read error."""
    reader = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW).stream_reader(raw, read_across_frames=True)
    try:
        body = reader.read(_MAX_DECODED + 1)
    except zstandard.ZstdError as exc:
        text = str(exc)
        if "Unknown frame descriptor" in text or "Unknown frame" in text:
            text = "invalid input: magic number mismatch"
        raise CompatError(400, text) from None
    if len(body) > _MAX_DECODED:
        raise CompatError(400, "http: request body too large")
    return body


def _go_float(value: float) -> float | int:
    """Go's ``float64`` encoding writes integral values without a fraction (``1``, not ``1.0``)."""
    return int(value) if float(value).is_integer() and abs(value) < 1e21 else float(value)


def _fits(kind: str, value: Any) -> bool:
    if value is None:
        return True  # null leaves a Go field at its zero value
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_types(req: dict[str, Any]) -> None:
    """The ``json: cannot unmarshal`` errors of the scalar fields of ``openai.ResponsesRequest``."""
    for key, kind in _GO_TYPES.items():
        value = req.get(key)
        if not _fits(kind, value):
            shown = go_kind(value)
            if kind == "int" and isinstance(value, float):
                shown = f"number {value!r}"
            raise CompatError(
                400, f"json: cannot unmarshal {shown} into Go struct field ResponsesRequest.{key} of type {kind}"
            )


def _content(item: dict[str, Any], where: str) -> tuple[str, list[str]]:
    """``convertResponsesContent`` of a message's content (a string is one ``input_text`` part)."""
    content = item.get("content")
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise CompatError(
            400,
            f"{where}: content must be a string or array: "
            f"json: cannot unmarshal {go_kind(content)} into Go value of type []json.RawMessage",
        )
    text: list[str] = []
    images: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type", "") if isinstance(part, dict) else ""
        if kind in ("input_text", "output_text"):
            text.append(str(part.get("text") or ""))
        elif kind == "input_image":
            url = str(part.get("image_url") or "")
            if not url:
                continue  # a file_id is not supported: the part is skipped
            if url.startswith(("http://", "https://")):
                raise CompatError(400, "image URLs are not currently supported, please use base64 encoded data instead")
            if not url.startswith(("data:;base64,", *_IMAGE_PREFIXES)):
                raise CompatError(400, "invalid image input")
            data = url.partition(",")[2]
            try:
                base64.b64decode(data, validate=True)  # base64.StdEncoding: padded, no stray bytes
            except binascii.Error:
                raise CompatError(400, "invalid image input") from None
            images.append(data)
        elif kind == "input_file":
            raise CompatError(400, "file inputs are not currently supported")
        else:
            raise CompatError(400, f"{where}: content[{i}]: unknown content type: {kind}")
    return "".join(text), images


def _arguments(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = decode_json_body(text.encode(), "api.ToolCallFunctionArguments")
    except DecodeError as exc:
        raise CompatError(400, f"failed to parse function call arguments: {exc}") from None
    return value or {}


def _messages(req: dict[str, Any]) -> list[dict[str, Any]]:
    """``FromResponsesRequest``'s message list: instructions, then the string or the input items."""
    messages: list[dict[str, Any]] = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": req["instructions"]})
    value = req.get("input")
    if isinstance(value, str):
        if value:
            messages.append({"role": "user", "content": value})
        return messages
    if value is not None and not isinstance(value, list):
        raise CompatError(
            400,
            "input must be a string or array: "
            f"json: cannot unmarshal {go_kind(value)} into Go value of type []json.RawMessage",
        )
    items = value or []
    pending_thinking = ""
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise CompatError(
                400,
                f"{where}: json: cannot unmarshal {go_kind(item)} into Go value of type struct {{ Type string "
                '"json:\\"type\\""; Role string "json:\\"role\\"" }',
            )
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            pending_thinking = str(item.get("encrypted_content") or "")
        elif kind == "message":
            text, images = _content(item, where)
            msg: dict[str, Any] = {"role": str(item.get("role") or ""), "content": text}
            if images:
                msg["images"] = images
            if msg["role"] == "assistant" and pending_thinking:
                msg["thinking"], pending_thinking = pending_thinking, ""
            # An assistant message replayed between a function_call and its output joins the call's turn.
            following = items[i + 1] if i + 1 < len(items) else None
            answered = following.get("call_id") if isinstance(following, dict) else None
            answered = (
                answered if isinstance(following, dict) and following.get("type") == "function_call_output" else None
            )
            last = messages[-1] if messages else None
            if (
                msg["role"] == "assistant"
                and answered
                and last is not None
                and last["role"] == "assistant"
                and any(call["id"] == answered for call in last.get("tool_calls", []))
            ):
                if last["content"] and text:
                    last["content"] += "\n"
                last["content"] += text
                if images:
                    last["images"] = [*last.get("images", []), *images]
                if msg.get("thinking"):
                    last["thinking"] = msg["thinking"]
                continue
            messages.append(msg)
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or ""),
                "function": {"name": str(item.get("name") or ""), "arguments": _arguments(item.get("arguments") or "")},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
                target = messages[-1]
            else:
                target = {"role": "assistant", "content": "", "tool_calls": [call]}
                messages.append(target)
            if pending_thinking:
                target["thinking"], pending_thinking = pending_thinking, ""
        elif kind == "function_call_output":
            output = item.get("output")
            images = []
            if isinstance(output, list):
                output, images = _content({"content": output}, where)
            msg = {"role": "tool", "content": str(output or ""), "tool_call_id": str(item.get("call_id") or "")}
            if images:
                msg["images"] = images
            messages.append(msg)
        elif kind == "web_search_call":
            pass  # history metadata; the assistant message after it carries the result
        elif kind:
            raise CompatError(400, f"{where}: unknown input item type: {dumps(kind).decode()}")
        else:
            raise CompatError(400, f"{where}: input item missing required 'type' field")
    if pending_thinking:
        messages.append({"role": "assistant", "content": "", "thinking": pending_thinking})
    return messages


def _tools(declared: list[Any], prefix: str = "") -> list[dict[str, Any]]:
    """``convertTools``: function tools; a namespace's members with namespace-qualified names."""
    tools: list[dict[str, Any]] = []
    for tool in declared:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "web_search":
            raise UnsupportedToolError("web_search")
        name = str(tool.get("name") or "")
        if tool.get("type") == "namespace":
            tools.extend(_tools(tool.get("tools") or [], f"{name}." if name else ""))
            continue
        if prefix and not name.startswith(prefix):
            name = prefix + name
        function = {"name": name, "description": tool.get("description") or "", "parameters": tool.get("parameters")}
        tools.append({"type": tool.get("type", ""), "function": function})
    return tools


def to_native_responses(req: dict[str, Any]) -> dict[str, Any]:
    """``FromResponsesRequest``: the native chat body (stream false unless asked for)."""
    messages = _messages(req)
    options: dict[str, Any] = {"temperature": req["temperature"] if req.get("temperature") is not None else 1.0}
    if req.get("top_p") is not None:
        options["top_p"] = req["top_p"]  # no default here: the model's own applies
    if req.get("max_output_tokens") is not None:
        options["num_predict"] = req["max_output_tokens"]
    body: dict[str, Any] = {"model": req.get("model") or "", "messages": messages, "options": options}
    effort = (req.get("reasoning") or {}).get("effort") or ""
    if effort:
        mapped = {"none": False, "minimal": "low", "xhigh": "max", "ultra": "max"}.get(effort, effort)
        if mapped not in (False, "low", "medium", "high", "max"):
            raise CompatError(
                400,
                f'invalid reasoning value: {dumps(effort).decode()} (must be "minimal", "low", "medium", '
                '"high", "xhigh", "ultra", "max", or "none")',
            )
        body["think"] = mapped
    if tools := _tools(req.get("tools") or []):
        body["tools"] = tools
    fmt = (req.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        body["format"] = fmt["schema"]
    body["stream"] = req.get("stream") is True
    return body


def _tool_struct(tool: dict[str, Any]) -> dict[str, Any]:
    """A request tool echoed as the ``ResponsesTool`` struct (its ``parameters`` map sorted)."""
    params = tool.get("parameters")
    echo: dict[str, Any] = {
        "type": tool.get("type", ""),
        "name": tool.get("name", ""),
        "description": tool.get("description"),
        "strict": tool.get("strict"),
        "parameters": None if params is None else msgspec.Raw(dumps_map(params)),
    }
    if tool.get("tools"):
        echo["tools"] = [_tool_struct(t) for t in tool["tools"] if isinstance(t, dict)]
    return echo


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_output_text(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _usage(obj: dict[str, Any]) -> dict[str, Any]:
    prompt = int(obj.get("prompt_eval_count", 0))
    output = int(obj.get("eval_count", 0))
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


class ResponsesWriter(Writer):
    """``middleware.ResponsesWriter`` with its ``openai.ResponsesStreamConverter``."""

    def __init__(self, req: dict[str, Any]) -> None:
        self.req = req
        self.stream = req.get("stream") is True
        self.model = str(req.get("model") or "")
        self.id = f"resp_{random.randrange(999999)}"
        self.item_id = f"msg_{random.randrange(999999)}"
        self.first = True
        self.sequence = 0
        self.output_index = 0
        self.content_started = False
        self.tool_calls_sent = False
        self.text = ""
        self.thinking = ""
        self.reasoning_id = ""
        self.completed: list[dict[str, Any]] = []
        self.pending: list[bytes] = []

    def error_body(self, status: int, message: str) -> bytes:
        return dumps(openai_error(status, message)) + b"\n"

    # ------------------------------------------------------------------ the echoed request

    def _tools_echo(self) -> list[Any]:
        return [t for t in self.req.get("tools") or [] if isinstance(t, dict)]

    def _reasoning(self) -> dict[str, Any] | None:
        reasoning = self.req.get("reasoning") or {}
        effort, summary = reasoning.get("effort") or None, reasoning.get("summary") or None
        if effort is None and summary is None:
            return None
        return {"effort": effort, "summary": summary}

    def _format(self) -> dict[str, Any]:
        fmt = (self.req.get("text") or {}).get("format")
        if not isinstance(fmt, dict):
            return {"type": "text"}
        out: dict[str, Any] = {"type": fmt.get("type") or ""}
        if fmt.get("name"):
            out["name"] = fmt["name"]
        if fmt.get("schema") is not None:
            out["schema"] = msgspec.Raw(dumps(fmt["schema"]))  # json.RawMessage: kept as sent, not sorted
        if fmt.get("strict") is not None:
            out["strict"] = fmt["strict"]
        return out

    def _truncation(self) -> str:
        value = self.req.get("truncation")
        return "disabled" if value is None else str(value)

    def _float(self, key: str) -> float | int:
        value = self.req.get(key)
        return _go_float(value if value is not None else 1.0)

    # ------------------------------------------------------------------ whole

    def whole(self, obj: dict[str, Any]) -> bytes:
        """``openai.ToResponse`` + ``completed_at`` stamped by the writer; ``json.Encoder`` output."""
        msg = obj.get("message", {})
        output: list[dict[str, Any]] = []
        if msg.get("thinking"):
            summary = [{"type": "summary_text", "text": msg["thinking"]}]
            output.append(
                {"id": f"rs_{self.id}", "type": "reasoning", "summary": summary, "encrypted_content": msg["thinking"]}
            )
        calls = _tool_calls(msg.get("tool_calls"))
        for i, call in enumerate(calls):
            item = {"id": f"fc_{self.id}_{i}", "type": "function_call", "status": "completed", "call_id": call["id"]}
            item["name"] = call["function"]["name"]
            item["arguments"] = call["function"]["arguments"]
            output.append({k: v for k, v in item.items() if v})  # omitempty
        if not calls:
            output.append(_message_item(self.item_id, "completed", msg.get("content", "")))
        tools = [_tool_struct(t) for t in self._tools_echo()]
        reasoning = self._reasoning()
        if reasoning is not None:
            reasoning = {k: v for k, v in reasoning.items() if v is not None}
        response = {
            "id": self.id,
            "object": "response",
            "created_at": _unix(obj.get("created_at")),
            "completed_at": int(time.time()),
            "status": "completed",
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": self.req.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": tools,
            "tool_choice": "auto",
            "truncation": self._truncation(),
            "parallel_tool_calls": True,
            "text": {"format": self._format()},
            "top_p": self._float("top_p"),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": self._float("temperature"),
            "reasoning": reasoning,
            "usage": _usage(obj),
            "max_output_tokens": self.req.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": self.req.get("background") is True,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }
        return dumps(response) + b"\n"

    # ------------------------------------------------------------------ stream

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        """``newEvent`` + ``writeEvent``: each event is one write followed by a Flush."""
        data["type"] = kind
        data["sequence_number"] = self.sequence
        self.sequence += 1
        frame = b"event: " + kind.encode() + b"\ndata: " + dumps_map(data) + b"\n\n"
        self.pending.append(frame)
        return frame

    def _response(self, status: str, output: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        """``buildResponseObject``: the request echoed into a stream event's ``response``."""
        tools = [
            {
                "type": t.get("type", ""),
                "name": t.get("name", ""),
                "description": t.get("description"),
                "strict": t.get("strict"),
                "parameters": t.get("parameters"),
            }
            for t in self._tools_echo()
        ]
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": self.req.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": tools,
            "tool_choice": "auto",
            "truncation": self._truncation(),
            "parallel_tool_calls": True,
            "text": {"format": self._format()},
            "top_p": self._float("top_p"),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": self._float("temperature"),
            "reasoning": self._reasoning(),
            "usage": usage,
            "max_output_tokens": self.req.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": self.req.get("background") is True,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _finish_reasoning(self) -> bytes:
        if not self.reasoning_id:
            return b""
        index = self.output_index
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }
        out = self._event(
            "response.reasoning_summary_text.done",
            {"item_id": self.reasoning_id, "output_index": index, "summary_index": 0, "text": self.thinking},
        )
        out += self._event("response.output_item.done", {"output_index": index, "item": item})
        self.completed.append(item)
        self.thinking = ""
        self.reasoning_id = ""
        self.output_index += 1
        return out

    def _thinking(self, text: str) -> bytes:
        out = b""
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            out += self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
        self.thinking += text
        delta = {"item_id": self.reasoning_id, "output_index": self.output_index, "summary_index": 0, "delta": text}
        return out + self._event("response.reasoning_summary_text.delta", delta)

    def _function_calls(self, calls: list[dict[str, Any]]) -> bytes:
        out = self._finish_reasoning()
        converted = _tool_calls(calls)
        for i, call in enumerate(converted):
            index = self.output_index + i
            item_id = f"fc_{random.randrange(999999)}_{i}"
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            done = {
                "id": item_id,
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"],
                "name": name,
                "arguments": arguments,
            }
            self.completed.append(done)
            added = {**done, "status": "in_progress", "arguments": ""}
            out += self._event("response.output_item.added", {"output_index": index, "item": added})
            where = {"item_id": item_id, "output_index": index}
            out += self._event("response.function_call_arguments.delta", {**where, "delta": arguments})
            out += self._event("response.function_call_arguments.done", {**where, "arguments": arguments})
            out += self._event("response.output_item.done", {"output_index": index, "item": done})
        self.output_index += len(converted)
        return out

    def _content(self, text: str) -> bytes:
        out = self._finish_reasoning()
        where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        if not self.content_started:
            self.content_started = True
            item = _message_item(self.item_id, "in_progress", None)
            out += self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
            out += self._event("response.content_part.added", {**where, "part": _output_text("")})
        self.text += text
        return out + self._event("response.output_text.delta", {**where, "delta": text, "logprobs": []})

    def _completion(self, obj: dict[str, Any]) -> bytes:
        out = self._finish_reasoning()
        if not self.tool_calls_sent and self.content_started:
            where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
            out += self._event("response.output_text.done", {**where, "text": self.text, "logprobs": []})
            out += self._event("response.content_part.done", {**where, "part": _output_text(self.text)})
            item = _message_item(self.item_id, "completed", self.text)
            out += self._event("response.output_item.done", {"output_index": self.output_index, "item": item})
        output: list[Any] = list(self.completed)
        if self.content_started:
            output.append(_message_item(self.item_id, "completed", self.text))
        response = self._response("completed", output, _usage(obj))
        response["completed_at"] = int(time.time())
        return out + self._event("response.completed", {"response": response})

    def flushes(self, obj: dict[str, Any]) -> list[bytes]:
        self.pending = []
        self.frames(obj)
        return self.pending

    def frames(self, obj: dict[str, Any]) -> bytes:
        """``ResponsesStreamConverter.Process``; a native error line decodes as an empty, unfinished answer."""
        out = b""
        if self.first:
            self.first = False
            empty: list[Any] = []
            out += self._event("response.created", {"response": self._response("in_progress", empty, None)})
            out += self._event("response.in_progress", {"response": self._response("in_progress", empty, None)})
        msg = obj.get("message", {})
        if msg.get("thinking"):
            out += self._thinking(msg["thinking"])
        if msg.get("tool_calls"):
            out += self._function_calls(msg["tool_calls"])
            self.tool_calls_sent = True
        elif not self.tool_calls_sent and msg.get("content"):
            out += self._content(msg["content"])
        if obj.get("done"):
            out += self._completion(obj)
        return out
