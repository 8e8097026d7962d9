"""The Ollama runner options Minato accepts: names, types, bounds, in one table.

The query parameters of the generation routes and the server-wide defaults setting are both
checked against it. Ollama documents no ranges for most options; the bounds here follow what the
options mean (probabilities in [0, 1], counts of at least one) and keep values inside what Ollama's
Go types hold, so a bad value is a 422 from Minato rather than a 500 from Ollama.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, NamedTuple

INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
MAX_STOP_SEQUENCES: Final = 16
MAX_STOP_CHARS: Final = 200
#: A Go ``time.ParseDuration`` string (what Ollama accepts for a text ``keep_alive``); ASCII digits only, as Go.
_GO_DURATION: Final = re.compile(r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_DURATION_PART: Final = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
_NANOSECONDS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
#: Largest ``keep_alive`` in seconds sent as a number; below Go's int64 nanoseconds (~292 years).
MAX_KEEP_ALIVE_SECONDS: Final = 9e9
TOO_LONG_DURATION: Final = "is longer than the longest duration Ollama accepts (about 2,562,047 h)"
_IGNORED: Final = "Accepted and forwarded for compatibility, but current Ollama ignores it (removed in {0}; {1})."


class OptionSpec(NamedTuple):
    """One option: its Ollama name, type, bounds and meaning."""

    ollama_name: str
    kind: type
    ge: float | None
    le: float | None
    description: str


OPTIONS: Final[dict[str, OptionSpec]] = {
    "numa": OptionSpec("numa", bool, None, None, _IGNORED.format("v0.3.4", "Ollama detects NUMA itself")),
    "num_ctx": OptionSpec(
        "num_ctx", int, 1, INT32_MAX, "Context window in tokens (changing it makes Ollama reload the model)."
    ),
    "num_keep": OptionSpec("num_keep", int, -1, INT32_MAX, "Prompt tokens kept when the context fills up (-1: all)."),
    "num_batch": OptionSpec(
        "num_batch", int, 1, INT32_MAX, "Prompt-processing batch size (changing it makes Ollama reload the model)."
    ),
    "low_vram": OptionSpec("low_vram", bool, None, None, _IGNORED.format("v0.6.9", "Ollama manages memory itself")),
    "seed": OptionSpec(
        "seed", int, -INT64_MAX - 1, INT64_MAX, "Random seed: the same seed and prompt give the same answer."
    ),
    "temperature": OptionSpec(
        "temperature", float, 0, 100, "Sampling temperature (0: deterministic; higher: more varied)."
    ),
    "max_new_tokens": OptionSpec(
        "num_predict",
        int,
        -2,
        INT32_MAX,
        "Most tokens to generate (Ollama's num_predict; -1: no limit, -2: fill the context).",
    ),
    "top_p": OptionSpec(
        "top_p", float, 0, 1, "Nucleus sampling: keep the smallest set of tokens whose probability sums to this."
    ),
    "top_k": OptionSpec("top_k", int, 0, INT32_MAX, "Sample only from the k most likely tokens (0: no limit)."),
    "min_p": OptionSpec("min_p", float, 0, 1, "Drop tokens less likely than this fraction of the most likely one."),
    "repeat_penalty": OptionSpec("repeat_penalty", float, 0, 100, "Penalty for repeating recent tokens (1: none)."),
    "presence_penalty": OptionSpec("presence_penalty", float, -2, 2, "Penalty for tokens that appeared at all."),
    "frequency_penalty": OptionSpec(
        "frequency_penalty", float, -2, 2, "Penalty growing with how often a token appeared."
    ),
    "stop": OptionSpec(
        "stop", list, None, None, f"Stop generating at this text (repeatable, at most {MAX_STOP_SEQUENCES} values)."
    ),
}


def check_option(name: str, value: Any) -> Any:
    """Return ``value`` for option ``name`` if it is of the right type and in range; else raise ``ValueError``."""
    spec = OPTIONS.get(name)
    if spec is None:
        raise ValueError(f"unknown option (known: {', '.join(OPTIONS)})")
    if spec.kind is list:
        return check_stop(value)
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be {'an integer' if spec.kind is int else 'a number'}")
    if spec.kind is int and not float(value).is_integer():
        raise ValueError("must be an integer")
    if (
        not math.isfinite(value)
        or (spec.ge is not None and value < spec.ge)
        or (spec.le is not None and value > spec.le)
    ):
        raise ValueError(f"must be between {spec.ge:g} and {spec.le:g}")
    return int(value) if spec.kind is int else float(value)


def check_stop(value: Any) -> list[str]:
    """Validate stop sequences: a list of non-empty strings, bounded in count and length."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of strings")
    if len(value) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are accepted")
    if any(not item or len(item) > MAX_STOP_CHARS for item in value):
        raise ValueError(f"each stop sequence must be 1-{MAX_STOP_CHARS} characters")
    return value


def parse_keep_alive(text: str) -> float | str:
    """Return ``keep_alive`` as Ollama accepts it: seconds as a number, or a Go duration string.

    A number-looking string must travel as a JSON number: Ollama rejects ``"300"`` with
    "missing unit in duration". Raises ``ValueError`` for anything Ollama would refuse.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        if not _GO_DURATION.fullmatch(text):
            raise ValueError(
                "must be a number of seconds (negative: forever) or a duration such as 5m or 1h30m"
            ) from None
        if not go_duration_fits(text):
            raise ValueError(TOO_LONG_DURATION) from None
        return text
    if not math.isfinite(seconds) or abs(seconds) > MAX_KEEP_ALIVE_SECONDS:
        raise ValueError("must be a finite number of seconds")
    if seconds < 0:
        return -1
    return int(seconds) if seconds.is_integer() else seconds


def go_duration_fits(text: str) -> bool:
    """Whether Go's ``time.ParseDuration`` accepts ``text`` (already of duration syntax) without overflow.

    Go sums unsigned nanoseconds unit by unit and answers ``time: invalid duration`` once the total
    passes 2**63 (2**63 itself only as a negative duration). Fractions go through float64 as in Go.
    """
    negative = text[:1] == "-"
    limit = 1 << 63
    total = 0
    for whole, fraction, unit in _GO_DURATION_PART.findall(text.lstrip("+-")):
        scale = _NANOSECONDS[unit]
        value = int(whole or "0")
        if value > limit // scale:
            return False
        value *= scale
        if fraction:
            digits, power = 0, 1.0
            for digit in fraction:  # Go's leadingFraction: stop gaining precision before overflow
                more = digits * 10 + int(digit)
                if digits > (limit - 1) // 10 or more > limit:
                    break
                digits, power = more, power * 10
            value += int(float(digits) * (float(scale) / power))
            if value > limit:
                return False
        total += value
        if total > limit:
            return False
    return negative or total < limit


def keep_alive_seconds(value: float | str) -> float:
    """The seconds a ``keep_alive`` (as :func:`parse_keep_alive` returns it) keeps a model; negative: forever."""
    if not isinstance(value, str):
        return float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * sum(
        float(f"{whole or 0}.{fraction or 0}") * _NANOSECONDS[unit] / 1e9
        for whole, fraction, unit in _GO_DURATION_PART.findall(text.lstrip("+-"))
    )
