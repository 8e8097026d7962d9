"""A door request's body: read within the limits, zstd-decoded, and parsed only for what Minato decides on.

The body travels to Ollama as it came. Minato reads a handful of top-level fields (the model
names, ``stream``, ``keep_alive``, ``options``, ``stream_options``, ``tools``) to apply keys,
scopes, limits and the cloud rule, so it must read them exactly as Ollama's Go decoder will:

- Go matches field names case-insensitively (``"MODEL"`` fills ``model``), Minato does not: a
  body naming a field Minato reads in another case is refused, or ``{"model": "allowed", "MODEL":
  "forbidden"}`` would pass the scope check as one model and run as the other;
- a repeated field is the last one in both decoders (msgspec and ``encoding/json`` agree);
- Go decodes the first JSON value and ignores what follows, and accepts invalid UTF-8; msgspec
  refuses both. A body Minato cannot read is therefore refused here (400), never forwarded unread.

Only an empty body goes to Ollama unread: it names nothing, and Ollama's own answer to it is the
one clients expect.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import zstandard
from litestar import Request

from minato.errors import BadRequestError, PayloadTooLargeError
from minato.web.limits import MAX_JSON_DEPTH, json_too_deep

#: The top-level fields Minato reads; a body naming one of them in another case is refused.
READ_FIELDS: Final = frozenset(
    {"model", "name", "stream", "keep_alive", "options", "stream_options", "source", "destination", "from", "tools"}
)
_FOLDED: Final = {name.casefold(): name for name in READ_FIELDS}
_decode_fields: Final = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode: Final = msgspec.json.Encoder().encode


class BodyRefusedError(BadRequestError):
    """A body Minato cannot read the way Ollama would (400, in the door's shape)."""


class DoorBody:
    """The bytes for Ollama and the fields Minato read from them."""

    __slots__ = ("_fields", "raw")

    def __init__(self, raw: bytes, fields: dict[str, msgspec.Raw]) -> None:
        self.raw = raw
        self._fields = fields

    @classmethod
    def parse(cls, raw: bytes) -> DoorBody:
        """Read the top level of ``raw``; refuse what Minato cannot read as Ollama would."""
        if not raw.strip():
            return cls(raw, {})
        if json_too_deep(raw):
            raise BodyRefusedError(f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
        try:
            fields = _decode_fields(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise BodyRefusedError("the request body must be one JSON object in UTF-8, with nothing after it") from None
        for name in fields:
            folded = _FOLDED.get(name.casefold())
            if folded is not None and folded != name:
                raise BodyRefusedError(f"the field {name!r} must be written {folded!r}")
        return cls(raw, fields)

    def field(self, name: str, kind: Any, default: Any = None) -> Any:
        """A field decoded as ``kind`` (``default`` when absent or null); refused when of another type."""
        value = self._fields.get(name)
        if value is None:
            return default
        try:
            decoded = msgspec.json.decode(value, type=kind | None)
        except msgspec.ValidationError as exc:
            raise BodyRefusedError(f"the field {name!r} is not valid: {_plain(exc)}") from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise BodyRefusedError(f"the field {name!r} is not valid UTF-8 JSON") from None
        return default if decoded is None else decoded

    def text(self, name: str) -> str:
        """A string field, empty when absent."""
        value: str = self.field(name, str, "")
        return value

    def object(self, name: str) -> dict[str, Any]:
        """An object field, empty when absent; its keys are checked like the top level's."""
        value: dict[str, Any] = self.field(name, dict[str, Any], {})
        return value

    @property
    def models(self) -> list[str]:
        """Every model the request names (a copy names two, a create may name its base)."""
        return [name for name in map(self.text, ("model", "name", "source", "destination", "from")) if name]

    @property
    def model(self) -> str:
        """The model the request is for (``model``, or its deprecated alias ``name``)."""
        return self.text("model") or self.text("name")

    def stream(self, *, default: bool) -> bool:
        """Whether the answer is a stream (Ollama's routes stream unless told not to; /v1 does not)."""
        value: bool = self.field("stream", bool, default)
        return value

    def with_field(self, name: str, value: Any) -> DoorBody:
        """A copy with one top-level field set (the bytes are re-encoded; every other value kept as sent)."""
        fields = dict(self._fields)
        fields[name] = msgspec.Raw(_encode(value))
        return DoorBody(_encode(fields), fields)


def _plain(exc: msgspec.ValidationError) -> str:
    return str(exc).split(" - at ", 1)[0]


def check_nested_names(values: dict[str, Any], names: frozenset[str], where: str) -> None:
    """Refuse an object field whose keys name ``names`` in another case (Go would read them)."""
    folded = {name.casefold(): name for name in names}
    for key in values:
        exact = folded.get(key.casefold())
        if exact is not None and exact != key:
            raise BodyRefusedError(f"the field {where}.{key!r} must be written {exact!r}")


async def read_body(request: Request[Any, Any, Any], max_bytes: int) -> bytes:
    """The request body within ``max_bytes`` (Litestar's bound; its time is bounded for every route by
    :class:`minato.web.limits.BodyTimeout`), zstd-decoded if so encoded.

    Codex sends zstd bodies to ``/v1/responses``; the decoded body is bounded by the same limit,
    so a small compressed body cannot expand into gigabytes.
    """
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding != "zstd":
        raise BodyRefusedError(f"Content-Encoding {encoding!r} is not supported (only zstd)")
    return _unzstd(raw, max_bytes)


def _unzstd(raw: bytes, max_bytes: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    parts: list[bytes] = []
    size = 0
    try:
        while chunk := reader.read(min(1 << 20, max_bytes + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(f"the decompressed body is larger than {max_bytes} bytes")
    except zstandard.ZstdError:
        raise BodyRefusedError("the body is not valid zstd") from None
    return b"".join(parts)


__all__ = ["READ_FIELDS", "BodyRefusedError", "DoorBody", "check_nested_names", "read_body"]
