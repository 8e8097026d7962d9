"""Go-flavoured wire helpers: JSON encoding/decoding errors, durations, base64, timestamps.

Everything here mimics what Ollama's Go server puts on (or expects from) the wire, as described
in ``/work/shared/reference/ollama-api.md``. Only the behaviour is emulated; no Go code is copied.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import msgspec

__all__ = [
    "FOREVER_NS",
    "DecodeError",
    "DurationError",
    "b64_error_offset",
    "decode_json_body",
    "dumps",
    "dumps_map",
    "go_duration_ns",
    "go_kind",
    "go_quote",
    "keep_alive_ns",
    "local_rfc3339",
    "utc_rfc3339",
]

FOREVER_NS: Final = 2**63 - 1  # math.MaxInt64 nanoseconds, i.e. ~292 years

_encoder: Final = msgspec.json.Encoder()
_sorted_encoder: Final = msgspec.json.Encoder(order="sorted")
_decoder: Final = msgspec.json.Decoder()


def dumps(obj: object) -> bytes:
    """Compact JSON like Go's ``json.Marshal``: ``<``, ``>``, ``&``, U+2028/9 escaped."""
    return _go_escape(_encoder.encode(obj))


def dumps_map(obj: object) -> bytes:
    """``json.Marshal`` of a ``map[string]any``: Go sorts map keys, at every level (``msgspec.Raw`` kept)."""
    return _go_escape(_sorted_encoder.encode(obj))


def _go_escape(out: bytes) -> bytes:
    if b"<" in out:
        out = out.replace(b"<", b"\\u003c")
    if b">" in out:
        out = out.replace(b">", b"\\u003e")
    if b"&" in out:
        out = out.replace(b"&", b"\\u0026")
    if b"\xe2\x80" in out:
        out = out.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return out


# --------------------------------------------------------------------------- timestamps

_utc_prefix_cache: dict[int, str] = {}
_local_prefix_cache: dict[int, tuple[str, str]] = {}


def _frac(nanos: int) -> str:
    if nanos == 0:
        return ""
    return "." + f"{nanos:09d}".rstrip("0")


def utc_rfc3339(ns: int | None = None) -> str:
    """``time.Now().UTC()`` marshalled by Go: RFC3339Nano, trailing zeros trimmed, ``Z``."""
    if ns is None:
        ns = time.time_ns()
    secs, nanos = divmod(ns, 1_000_000_000)
    prefix = _utc_prefix_cache.get(secs)
    if prefix is None:
        if len(_utc_prefix_cache) > 1024:
            _utc_prefix_cache.clear()
        prefix = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _utc_prefix_cache[secs] = prefix
    return prefix + _frac(nanos) + "Z"


def local_rfc3339(ns: int) -> str:
    """A local-zone Go timestamp (``modified_at``, ``expires_at``); far-future values allowed."""
    secs, nanos = divmod(ns, 1_000_000_000)
    cached = _local_prefix_cache.get(secs)
    if cached is None:
        if len(_local_prefix_cache) > 1024:
            _local_prefix_cache.clear()
        try:
            offset = time.localtime(secs).tm_gmtoff
        except (OverflowError, OSError, ValueError):
            offset = time.localtime().tm_gmtoff
        tz = timezone(timedelta(seconds=offset))
        stamp = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=secs)).astimezone(tz)
        if offset == 0:
            zone = "Z"
        else:
            sign = "+" if offset > 0 else "-"
            hours, rem = divmod(abs(offset), 3600)
            zone = f"{sign}{hours:02d}:{rem // 60:02d}"
        cached = (stamp.strftime("%Y-%m-%dT%H:%M:%S"), zone)
        _local_prefix_cache[secs] = cached
    return cached[0] + _frac(nanos) + cached[1]


# --------------------------------------------------------------------------- Go strings


def go_quote(s: str) -> str:
    """Roughly ``strconv.Quote``: double quotes, escapes for quotes/backslashes/controls."""
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _quote_char(ch: str) -> str:
    """encoding/json ``quoteChar``: ``'x'``, with ``'\\''`` and ``'"'`` special cases."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + go_quote(ch)[1:-1] + "'"


def go_kind(value: object) -> str:
    """The JSON kind word Go puts in ``cannot unmarshal <kind> into ...``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


# --------------------------------------------------------------------------- durations

_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


class DurationError(ValueError):
    """A ``time.ParseDuration`` failure, message worded like Go's."""


def go_duration_ns(text: str) -> int:
    """``time.ParseDuration`` in nanoseconds (negative allowed); raises :class:`DurationError`.

    Exact as Go: unsigned integer nanoseconds summed unit by unit, a total past 2**63 (or 2**63
    itself when positive) is ``time: invalid duration``; fractions go through float64.
    """
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    invalid = DurationError("time: invalid duration " + go_quote(orig))
    if not s:
        raise invalid
    limit = 1 << 63
    total = 0
    while s:
        if not (s[0] == "." or (s[0].isascii() and s[0].isdigit())):
            raise invalid
        i = 0
        while i < len(s) and s[i].isascii() and s[i].isdigit():
            i += 1
        whole, s = s[:i], s[i:]
        if whole and int(whole) > limit:  # leadingInt's overflow
            raise invalid
        frac = ""
        if s.startswith("."):
            s = s[1:]
            j = 0
            while j < len(s) and s[j].isascii() and s[j].isdigit():
                j += 1
            frac, s = s[:j], s[j:]
        if not whole and not frac:
            raise invalid
        k = 0
        while k < len(s) and not (s[k] == "." or (s[k].isascii() and s[k].isdigit())):
            k += 1
        if k == 0:
            raise DurationError("time: missing unit in duration " + go_quote(orig))
        unit, s = s[:k], s[k:]
        scale = _UNITS.get(unit)
        if scale is None:
            raise DurationError("time: unknown unit " + go_quote(unit) + " in duration " + go_quote(orig))
        value = int(whole or "0")
        if value > limit // scale:
            raise invalid
        value *= scale
        if frac:
            digits, power = 0, 1.0
            for ch in frac:  # leadingFraction stops gaining precision before it overflows
                more = digits * 10 + int(ch)
                if digits > (limit - 1) // 10 or more > limit:
                    break
                digits, power = more, power * 10
            value += int(float(digits) * (float(scale) / power))
            if value > limit:
                raise invalid
        total += value
        if total > limit:
            raise invalid
    if neg:
        return -total
    if total > limit - 1:
        raise invalid
    return total


def keep_alive_ns(value: object) -> int:
    """``api.Duration.UnmarshalJSON``: numbers are seconds, negatives mean forever.

    Raises :class:`DurationError` with Go's message for unit-less strings, bools, objects...
    """
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        if value < 0:
            return FOREVER_NS
        return min(int(value * 1_000_000_000), FOREVER_NS)
    if isinstance(value, str):
        ns = go_duration_ns(value)
        return FOREVER_NS if ns < 0 else ns
    if isinstance(value, dict):
        raise DurationError("Unsupported type: 'map[string]interface {}'")
    if isinstance(value, list):
        raise DurationError("Unsupported type: '[]interface {}'")
    raise DurationError("Unsupported type: '<nil>'")


# --------------------------------------------------------------------------- base64

_B64: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64_error_offset(text: str) -> int | None:  # noqa: PLR0911 - mirrors the decoder's exits
    """Where Go's ``base64.StdEncoding`` decoder gives up, or ``None`` if ``text`` decodes."""
    src = text.encode("utf-8", "surrogatepass")
    n = len(src)
    si = 0
    while True:
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return None
                return si - j  # not enough input for a padded quantum
            c = src[si]
            si += 1
            if c in (0x0A, 0x0D):
                continue
            if c in _B64:
                j += 1
                continue
            if c != 0x3D:  # '='
                return si - 1
            if j in (0, 1):
                return si - 1
            if j == 2:
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    return n
                if src[si] != 0x3D:
                    return si - 1
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            if si < n:
                return si
            return None


# --------------------------------------------------------------------------- JSON decoding


class DecodeError(Exception):
    """A request body rejected while decoding; ``str(self)`` is the Go error text (400)."""


def _container_at(doc: str, pos: int) -> str:
    """``object`` or ``array``: the innermost open container before ``pos`` (strings skipped)."""
    stack: list[str] = []
    in_str = False
    esc = False
    for ch in doc[:pos]:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return "array" if stack and stack[-1] == "[" else "object"


def _syntax_message(raw: bytes) -> str:  # noqa: PLR0911 - one exit per Go message
    """Map a JSON syntax error to what Go's decoder would have said (best effort)."""
    doc = raw.decode("utf-8", "replace")
    try:
        json.loads(doc)
    except json.JSONDecodeError as exc:
        pos = exc.pos
        msg = exc.msg
        if pos >= len(doc.rstrip(" \t\r\n")) or msg.startswith("Unterminated string"):
            return "unexpected EOF"
        ch = _quote_char(doc[pos])
        if msg.startswith("Expecting value"):
            return f"invalid character {ch} looking for beginning of value"
        if msg.startswith("Expecting property name"):
            return f"invalid character {ch} looking for beginning of object key string"
        if msg.startswith("Expecting ':'"):
            return f"invalid character {ch} after object key"
        if msg.startswith("Expecting ','"):
            if _container_at(doc, pos) == "array":
                return f"invalid character {ch} after array element"
            return f"invalid character {ch} after object key:value pair"
        if msg.startswith("Invalid control character"):
            return f"invalid character {ch} in string literal"
        if msg.startswith("Invalid \\u"):
            return f"invalid character {ch} in \\u hexadecimal character escape"
        if msg.startswith("Invalid \\escape"):
            return f"invalid character {ch} in string escape code"
        return f"invalid character {ch} looking for beginning of value"
    # stdlib accepted something msgspec did not (NaN, Infinity...): Go rejects those too.
    stripped = doc.lstrip(" \t\r\n")
    first = stripped[0] if stripped else "?"
    return f"invalid character {_quote_char(first)} looking for beginning of value"


def decode_json_body(raw: bytes, go_type: str) -> dict[str, Any] | None:
    """Decode a request body the way gin's ``ShouldBindJSON`` + Ollama's handlers do.

    Returns the object (``None`` for a literal ``null``). Raises :class:`DecodeError` with
    ``missing request body`` / ``unexpected EOF`` / ``invalid character ...`` /
    ``json: cannot unmarshal ... into Go value of type <go_type>``.
    """
    if not raw.strip(b" \t\r\n"):
        raise DecodeError("missing request body")
    try:
        value = _decoder.decode(raw)
    except msgspec.DecodeError:
        # Go's json.Decoder reads the first value only and ignores what follows it.
        try:
            text = raw.decode("utf-8")
            value, _end = json.JSONDecoder().raw_decode(text.lstrip(" \t\r\n"))
        except (ValueError, UnicodeDecodeError):
            raise DecodeError(_syntax_message(raw)) from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DecodeError(f"json: cannot unmarshal {go_kind(value)} into Go value of type {go_type}")
    return value
