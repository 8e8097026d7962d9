"""A generation's parameters once validated, and the checks every generation shares, wherever its
parameters came from (a query string, a JSON body or a form).

Only parameters the caller set are forwarded, so Ollama's and the model's own defaults apply to
everything else. ``keep_alive`` and the system prompt are top-level Ollama fields; the rest go into
Ollama's ``options``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from minato.auth.caller import Caller
from minato.core.policy import Policy
from minato.errors import InvalidInputError
from minato.ollama.options import OPTIONS, check_stop, parse_keep_alive
from minato.ollama.wire import ChatRequest, WireMessage
from minato.settings import Settings
from minato.state.conversations import validate_session_id


class GenerationOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The optional generation parameters of one request, already validated."""

    system_prompt: str | None = None
    keep_alive: float | str | UnsetType = UNSET
    num_ctx: int | None = None
    """The context window the caller asked for (bounded for user keys once the model is known)."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    session: str | None = None
    format: str | UnsetType = UNSET
    think: bool | UnsetType = UNSET

    def within(self, tokens: int | None) -> GenerationOptions:
        """These options with the answer capped at ``tokens`` (what the caller's quota has left; ``None``:
        no quota): Ollama's ``num_predict`` no higher, and never unbounded (-1, -2)."""
        if tokens is None:
            return self
        asked = self.options.get("num_predict")
        if isinstance(asked, int) and 0 < asked <= tokens:
            return self
        return msgspec.structs.replace(self, options={**self.options, "num_predict": tokens})

    def chat_request(
        self,
        model: str,
        message: str,
        images: list[str],
        session_system_prompt: str | None = None,
        history: list[WireMessage] | None = None,
    ) -> ChatRequest:
        """Build the Ollama chat request: system prompt, the session's history, the new message.

        A ``system_prompt`` given with the request wins over the session's, for this request only.
        """
        messages = []
        system_prompt = self.system_prompt or session_system_prompt
        if system_prompt:
            messages.append(WireMessage(role="system", content=system_prompt))
        messages.extend(history or ())
        messages.append(WireMessage(role="user", content=message, images=images))
        return ChatRequest(
            model=model,
            messages=messages,
            stream=False,
            options=self.options or UNSET,
            keep_alive=self.keep_alive,
            format=self.format,
            think=self.think,
        )


def generation_options(
    policy: Policy,
    caller: Caller,
    source: str,
    *,
    session: str | None,
    system_prompt: str | None,
    keep_alive: str | None,
    format: str | None,
    think: bool | None,
    given: dict[str, Any],
) -> GenerationOptions:
    """The checks and defaults every generation shares, whether its parameters came in the query or a body."""
    settings = policy.settings
    if system_prompt is not None:
        check_text_length("system_prompt", system_prompt, settings, source)
    if session is not None:
        validate_session_id(session, source)
    stop = given.get("stop")
    if stop is not None:
        try:
            check_stop(stop)
        except ValueError as exc:
            raise InvalidInputError.single(source, "stop", str(exc)) from None
    # Operator defaults first, then what the caller set: a request's value wins.
    options = {OPTIONS[name].ollama_name: value for name, value in settings.default_options.items()}
    options.update({OPTIONS[name].ollama_name: value for name, value in given.items() if value is not None})
    alive = resolve_keep_alive(keep_alive, settings, source)
    if keep_alive is not None:
        policy.check_keep_alive(caller, alive)
    return GenerationOptions(
        system_prompt=system_prompt,
        keep_alive=alive,
        num_ctx=given.get("num_ctx"),
        options=options,
        session=session,
        format=format if format is not None else UNSET,
        think=think if think is not None else UNSET,
    )


def resolve_keep_alive(value: str | None, settings: Settings, source: str = "query") -> float | str | UnsetType:
    """The ``keep_alive`` to send: the caller's (validated), else the operator's default, else none."""
    if value is None:
        return settings.default_keep_alive if settings.default_keep_alive is not None else UNSET
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidInputError.single(source, "keep_alive", str(exc)) from None


def check_text_length(name: str, value: str, settings: Settings, source: str = "query") -> None:
    """Reject empty or over-long text parameters."""
    if not value.strip():
        raise InvalidInputError.single(source, name, "must not be empty", "missing")
    if len(value) > settings.max_message_chars:
        raise InvalidInputError.single(
            source,
            name,
            f"is longer than {settings.max_message_chars} characters",
            "string_too_long",
        )


__all__ = ["GenerationOptions", "check_text_length", "generation_options", "resolve_keep_alive"]
