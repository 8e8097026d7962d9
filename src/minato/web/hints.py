"""The words of an "unknown parameter" refusal on Minato's own routes: a pointer to Minato's name when a
client used another API's (Ollama's ``num_predict``, OpenAI's ``max_tokens``, ``stream``)."""

from __future__ import annotations

from typing import Final

#: Names other APIs (Ollama's, OpenAI's) use for what Minato's own routes call otherwise: the hint an
#: "unknown" refusal gives, when the route takes the name it points to.
_OTHER_APIS_NAMES: Final = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "num_predict": "max_new_tokens",
    "prompt": "message",
    "system": "system_prompt",
}
_STREAM_HINT: Final = "for a streamed answer, ask the same under /stream/ (GET /stream/{model}, POST /stream/{model})"


def unknown_name_sentence(name: str, known: list[str] | str, what: str = "parameter") -> str:
    """The refusal of a parameter a route of Minato's own does not take: a hint when another API uses
    that name for something the route has, then the names it knows."""
    names = known.split(", ") if isinstance(known, str) else known
    target = _OTHER_APIS_NAMES.get(name.lower())
    if target in names:
        hint = f"; Minato calls it {target}"
    elif name.lower() == "stream" and "message" in names:
        hint = f"; {_STREAM_HINT}"
    else:
        hint = ""
    return f"unknown {what}{hint} (known: {', '.join(names)})"


__all__ = ["unknown_name_sentence"]
