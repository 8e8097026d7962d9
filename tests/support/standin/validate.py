"""Request-body validation with the error texts Ollama's Go decoder and handlers produce."""

from __future__ import annotations

from typing import Any, Final

from tests.support.standin.gowire import (
    DecodeError,
    DurationError,
    b64_error_offset,
    decode_json_body,
    go_kind,
    keep_alive_ns,
)

__all__ = [
    "CHAT_FIELDS",
    "COPY_FIELDS",
    "CREATE_FIELDS",
    "DELETE_FIELDS",
    "EMBEDDINGS_FIELDS",
    "EMBED_FIELDS",
    "GENERATE_FIELDS",
    "PULL_FIELDS",
    "PUSH_FIELDS",
    "SHOW_FIELDS",
    "OptionError",
    "RequestError",
    "check_options",
    "decode_request",
]


class RequestError(Exception):
    """A decode-time rejection: always HTTP 400 with ``{"error": str(self)}``."""


class OptionError(Exception):
    """``Options.FromMap`` rejecting a known key with the wrong type: HTTP 500."""


GENERATE_FIELDS: Final = {
    "model": "string",
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "[]int",
    "stream": "bool",
    "raw": "bool",
    "format": "any",
    "keep_alive": "duration",
    "images": "images",
    "options": "map",
    "think": "think",
    "truncate": "bool",
    "shift": "bool",
    "logprobs": "bool",
    "top_logprobs": "int",
    "_debug_render_only": "bool",
}
CHAT_FIELDS: Final = {
    "model": "string",
    "messages": "messages",
    "stream": "bool",
    "format": "any",
    "keep_alive": "duration",
    "tools": "tools",
    "options": "map",
    "think": "think",
    "truncate": "bool",
    "shift": "bool",
    "_debug_render_only": "bool",
    "logprobs": "bool",
    "top_logprobs": "int",
}
PULL_FIELDS: Final = {
    "model": "string",
    "name": "string",
    "insecure": "bool",
    "username": "string",
    "password": "string",
    "stream": "bool",
}
SHOW_FIELDS: Final = {
    "model": "string",
    "name": "string",
    "system": "string",
    "template": "string",
    "verbose": "bool",
    "options": "map",
}
DELETE_FIELDS: Final = {"model": "string", "name": "string"}
COPY_FIELDS: Final = {"source": "string", "destination": "string"}
PUSH_FIELDS: Final = {"model": "string", "name": "string", "insecure": "bool", "stream": "bool"}
#: The part of ``api.CreateRequest`` the stand-in acts on (``from`` an installed model).
CREATE_FIELDS: Final = {
    "model": "string",
    "name": "string",
    "from": "string",
    "stream": "bool",
    "quantize": "string",
    "template": "string",
    "system": "string",
    "license": "any",
    "parameters": "map",
    "messages": "messages",
}
EMBED_FIELDS: Final = {
    "model": "string",
    "input": "any",
    "truncate": "bool",
    "dimensions": "int",
    "keep_alive": "duration",
    "options": "map",
}
EMBEDDINGS_FIELDS: Final = {
    "model": "string",
    "prompt": "string",
    "keep_alive": "duration",
    "options": "map",
}

_MESSAGE_FIELDS: Final = {
    "role": "string",
    "content": "string",
    "thinking": "string",
    "images": "images",
    "tool_calls": "array",
    "tool_name": "string",
    "tool_call_id": "string",
}

_GO_TYPES: Final = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "[]int": "[]int",
    "map": "map[string]interface {}",
    "images": "[]api.ImageData",
    "messages": "[]api.Message",
    "tools": "api.Tools",
    "array": "[]api.ToolCall",
}
_FOLDED: dict[int, dict[str, str]] = {}


def _type_error(value: object, where: str, go_type: str) -> str:
    kind = go_kind(value)
    if isinstance(value, float) and go_type == "int":
        kind = f"number {value!r}"
    return f"json: cannot unmarshal {kind} into Go struct field {where} of type {go_type}"


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _check_images(value: object, where: str) -> str | None:
    if not isinstance(value, list):
        return _type_error(value, where, "[]api.ImageData")
    for item in value:
        if item is None:
            continue
        if not isinstance(item, str):
            return _type_error(item, where, "api.ImageData")
        offset = b64_error_offset(item)
        if offset is not None:
            return f"illegal base64 data at input byte {offset}"
    return None


def _check_message(msg: object, where: str) -> None:
    """``Message`` has its own UnmarshalJSON: its first error aborts the whole decode."""
    if msg is None:
        return
    if not isinstance(msg, dict):
        raise RequestError(_type_error(msg, where, "api.Message"))
    for key, value in msg.items():
        kind = _MESSAGE_FIELDS.get(key) or _MESSAGE_FIELDS.get(key.lower())
        if kind is None or value is None:
            continue
        sub = f"{where}.{key.lower()}"
        if kind == "string" and not isinstance(value, str):
            raise RequestError(_type_error(value, sub, "string"))
        if kind == "images" and (err := _check_images(value, sub)) is not None:
            raise RequestError(err)
        if kind == "array" and not isinstance(value, list):
            raise RequestError(_type_error(value, sub, "[]api.ToolCall"))


def _check_think(value: object) -> None:
    if isinstance(value, bool | str):
        return
    raise RequestError('think must be a boolean or string ("high", "medium", "low", true, or false)')


def decode_request(raw: bytes, go_type: str, fields: dict[str, str]) -> dict[str, Any]:
    """Decode and type-check a body; the returned dict has canonical (lower-case) keys.

    Raises :class:`RequestError` (400) with Go's wording. A literal ``null`` body gives ``{}``.
    """
    try:
        body = decode_json_body(raw, go_type)
    except DecodeError as exc:
        raise RequestError(str(exc)) from None
    if body is None:
        return {}
    struct = go_type.rpartition(".")[2]
    folded = _FOLDED.get(id(fields))
    if folded is None:
        folded = {k.lower(): k for k in fields}
        _FOLDED[id(fields)] = folded
    out: dict[str, Any] = {}
    saved: str | None = None
    for key, value in body.items():
        canon = key if key in fields else folded.get(key.lower())
        if canon is None:
            continue  # unknown fields are ignored (no DisallowUnknownFields)
        if value is None:
            out.pop(canon, None)
            continue
        kind = fields[canon]
        where = f"{struct}.{canon}"
        err: str | None = None
        if kind == "string":
            if not isinstance(value, str):
                err = _type_error(value, where, "string")
        elif kind == "bool":
            if not isinstance(value, bool):
                err = _type_error(value, where, "bool")
        elif kind == "int":
            if not _is_int(value):
                err = _type_error(value, where, "int")
        elif kind == "[]int":
            if not isinstance(value, list):
                err = _type_error(value, where, "[]int")
            else:
                bad = next((v for v in value if v is not None and not _is_int(v)), None)
                if bad is not None:
                    err = _type_error(bad, where, "int")
        elif kind == "map":
            if not isinstance(value, dict):
                err = _type_error(value, where, "map[string]interface {}")
        elif kind == "images":
            err = _check_images(value, where)
        elif kind == "messages":
            if not isinstance(value, list):
                err = _type_error(value, where, "[]api.Message")
            else:
                for msg in value:
                    _check_message(msg, where)
        elif kind == "tools":
            if not isinstance(value, list):
                err = _type_error(value, where, "api.Tools")
        elif kind == "duration":
            try:
                out[canon] = keep_alive_ns(value)
            except DurationError as exc:
                raise RequestError(str(exc)) from None
            continue
        elif kind == "think":
            _check_think(value)
        if err is not None:
            if saved is None:
                saved = err
            continue
        out[canon] = value
    if saved is not None:
        raise RequestError(saved)
    return out


_INT_OPTIONS: Final = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "draft_num_predict",
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
    }
)
_FLOAT_OPTIONS: Final = frozenset(
    {
        "top_p",
        "min_p",
        "typical_p",
        "temperature",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    }
)
_BOOL_OPTIONS: Final = frozenset({"use_mmap"})


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``Options.FromMap``: unknown keys ignored, ``null`` skipped, wrong types → OptionError."""
    if not options:
        return {}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _INT_OPTIONS:
            if not numeric:
                raise OptionError(f'option "{key}" must be of type integer')
            out[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            if not numeric:
                raise OptionError(f'option "{key}" must be of type float32')
            out[key] = float(value)
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise OptionError(f'option "{key}" must be of type boolean')
            out[key] = value
        elif key == "stop":
            if not isinstance(value, list):
                raise OptionError(f'option "{key}" must be of type array')
            if not all(isinstance(v, str) for v in value):
                raise OptionError(f'option "{key}" must be of type array of strings')
            out[key] = value
    return out
