"""What a caller may do: the one object every route and door asks.

:mod:`minato.web.auth` says *who* is calling (a key and its role); this module says *what* that caller
may do, for every route and door alike, so that no route can forget a rule another one applies:

- the routes its role opens: user routes, admin routes, and the metrics scrape (an admin key or a
  ``MINATO_METRICS_KEYS`` key);
- the models it may name: its key's patterns, and never one of Ollama's cloud models (``:cloud`` /
  ``-cloud``, run on ollama.com under the operator's account) unless ``MINATO_ALLOW_CLOUD``;
- the models it may see in lists and reports;
- the limits user keys live by: ``keep_alive`` (1 s to ``MINATO_USER_MAX_KEEP_ALIVE``) and ``num_ctx``
  (up to ``MINATO_USER_MAX_NUM_CTX``), each compared as a number whatever its JSON spelling.

No Litestar here: a refusal is a :mod:`minato.errors` error, which each door renders in its own shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from msgspec import UnsetType
from msgspec.structs import replace

from minato.auth.caller import ANONYMOUS, Caller, Role
from minato.errors import BadRequestError, ForbiddenError
from minato.ollama.options import keep_alive_seconds
from minato.settings import Settings

if TYPE_CHECKING:
    from minato.upstream.ports import BackendStatus, Facts

#: The ``num_ctx`` cap for user keys when neither the operator nor the model names one.
FALLBACK_USER_MAX_NUM_CTX: Final = 131_072
CLOUD_REFUSED: Final = (
    "cloud models and Ollama's account routes spend or change the operator's ollama.com account; "
    "Minato refuses them unless MINATO_ALLOW_CLOUD=true"
)
#: Anthropic's server tools that Ollama runs on ollama.com under the operator's account.
CLOUD_TOOLS: Final = ("web_search", "web_fetch")


class RouteNeeds:
    """What a route asks of a caller's role (a route's ``opt`` names it; the default is a user key)."""

    USER: Final = "user"
    ADMIN: Final = "admin"
    METRICS: Final = "metrics"


class OptionRefusedError(BadRequestError):
    """An option Ollama would read differently from what Minato checked (400, in the door's shape)."""


def is_cloud_model(name: str) -> bool:
    """Whether Ollama would send ``name`` to ollama.com (a ``:cloud`` or ``-cloud`` tag or name)."""
    bare = name.strip().lower().split("@", 1)[0]
    return bare.endswith((":cloud", "-cloud"))


def whole_number(name: str, value: Any) -> int | None:
    """An option Ollama reads as an integer, as the integer Ollama will use (``None`` when absent).

    Ollama's Go decoder turns any JSON number into its integer part (``99999999.0`` and ``1e8`` are a
    context of 100 million), so a bound is compared with the number, never with the spelling; a value
    with a fractional part, or not a number at all, is refused rather than truncated behind the caller's back.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionRefusedError(f'option "{name}" must be an integer')
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise OptionRefusedError(f'option "{name}" must be a whole number, not {value!r}')
        return int(value)
    return value


def plain_seconds(value: float | str) -> str:
    """``keep_alive`` as a person writes it, and as a query carries it: ``0``, ``-1``, ``90``, ``1.5``, ``5m``."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Policy:
    """The rules of one deployment (its settings), asked by every route and door."""

    __slots__ = ("keyed", "settings")

    def __init__(self, settings: Settings, *, keyed: bool = False) -> None:
        self.settings = settings
        self.keyed = keyed
        """Whether keys are configured (without any, every caller is :data:`ANONYMOUS`)."""

    def viewer(self, identified: Caller | None) -> Caller | None:
        """Who a report is for: the caller the guard identified; everyone, on a deployment without keys;
        nobody it may trust (``None``) on a probe left open (``MINATO_OPEN_PROBES``) of one with keys."""
        if identified is not None:
            return identified
        return None if self.keyed else ANONYMOUS

    # -- routes ----------------------------------------------------------------------------------

    def check_route(self, caller: Caller, needs: str) -> None:
        """A 403 unless ``caller``'s role opens a route that ``needs`` a user, an admin or a scrape key.

        A metrics key opens only the metrics scrape, and the scrape needs an admin or a metrics key:
        the metrics name every key and what it generated.
        """
        if needs == RouteNeeds.METRICS:
            if caller.role is not Role.METRICS and caller.role < Role.ADMIN:
                raise ForbiddenError("/metrics needs an admin key or a metrics key (MINATO_METRICS_KEYS)")
            return
        if caller.role is Role.METRICS:
            raise ForbiddenError("this key may only read /metrics (a MINATO_METRICS_KEYS key)")
        if needs == RouteNeeds.ADMIN and caller.role < Role.ADMIN:
            raise ForbiddenError("this route needs an admin key")

    def check_account_route(self, caller: Caller) -> None:
        """Ollama's account and cloud routes: refused for every key, or admin-only when cloud is allowed."""
        if not self.settings.allow_cloud:
            raise ForbiddenError(CLOUD_REFUSED)
        if not caller.is_admin:
            raise ForbiddenError("Ollama's account routes need an admin key")

    def queue_scope(self, caller: Caller, key: str | None) -> Caller | None:
        """Whose generations ``caller`` may see in the queue report: every key's (``None``), or only
        its own (itself). An admin may narrow it to the key named ``key`` (done by the report); a user
        key naming another key, and a metrics key, get a 403."""
        if caller.role is Role.METRICS:
            raise ForbiddenError("this key may only read /metrics (a MINATO_METRICS_KEYS key)")
        if caller.is_admin:
            return None
        if key is not None and key != caller.name:
            raise ForbiddenError("a user key sees only its own generations in the queue")
        return caller

    # -- models ----------------------------------------------------------------------------------

    def check_model(self, caller: Caller, model: str) -> None:
        """A 403 unless ``caller`` may name ``model``: the one model check of every route and door."""
        if is_cloud_model(model) and not self.settings.allow_cloud:
            raise ForbiddenError(f"model '{model}': {CLOUD_REFUSED}")
        if not caller.allows(model):
            patterns = ", ".join(caller.models or ())
            raise ForbiddenError(f"this key may not use model '{model}' (its models: {patterns})")

    def check_models(self, caller: Caller, names: Iterable[str]) -> None:
        """:meth:`check_model` for each model a request names (a copy names two)."""
        for name in names:
            self.check_model(caller, name)

    def check_tool(self, tool_type: str) -> None:
        """A 403 for a server tool Ollama runs on ollama.com (Anthropic's web search and fetch), unless allowed."""
        if tool_type.startswith(CLOUD_TOOLS) and not self.settings.allow_cloud:
            raise ForbiddenError(f"the {tool_type} tool: {CLOUD_REFUSED}")

    @staticmethod
    def may_see(viewer: Caller | None, model: str) -> bool:
        """Whether a list or report shown to ``viewer`` (see :meth:`viewer`) may name ``model``: a key sees
        the models in its scope, a caller no key identified sees no model names."""
        return viewer is not None and viewer.allows(model)

    def visible_backends(self, viewer: Caller | None, backends: list[BackendStatus]) -> list[BackendStatus]:
        """The pool's backends as ``viewer`` may see them: the loaded models outside its scope left out."""
        return [
            replace(backend, loaded=[name for name in backend.loaded if self.may_see(viewer, name)])
            for backend in backends
        ]

    # -- the limits of user keys -----------------------------------------------------------------

    def check_keep_alive(self, caller: Caller, value: float | str | UnsetType | None) -> None:
        """Refuse a user key's ``keep_alive`` outside 1 s to ``MINATO_USER_MAX_KEEP_ALIVE``.

        ``0`` would unload a model others are using and a negative value would pin it forever: both
        decide for everyone who shares the GPU, so they are an operator's (an admin key's) to make.
        """
        if caller.is_admin or value is None or isinstance(value, UnsetType):
            return
        seconds = keep_alive_seconds(value)
        limit = self.settings.user_max_keep_alive
        if seconds == 0:
            reason = "0 unloads the model at once, for everyone using it"
        elif seconds < 0:
            reason = "a negative value keeps the model loaded forever"
        elif seconds < 1:
            reason = "less than a second unloads the model at once, for everyone using it"
        elif seconds > keep_alive_seconds(limit):
            reason = f"that is longer than {plain_seconds(limit)} (MINATO_USER_MAX_KEEP_ALIVE)"
        else:
            return
        raise ForbiddenError(
            f"keep_alive {plain_seconds(value)}: {reason}. A user key may keep a model loaded from 1 s to "
            f"{plain_seconds(limit)}; anything else needs an admin key"
        )

    async def check_num_ctx(self, caller: Caller, upstream: Facts, model: str, asked: int | None) -> None:
        """Refuse a user key's ``num_ctx`` above ``MINATO_USER_MAX_NUM_CTX`` (or the model's context): a
        huge context makes Ollama reload the model, with that context, for everyone."""
        if asked is None or caller.is_admin:
            return
        if self.settings.user_max_num_ctx:
            cap, source = self.settings.user_max_num_ctx, "MINATO_USER_MAX_NUM_CTX"
        else:
            context = (await upstream.facts(model)).context_length
            cap, source = (
                (context, "the model's context length") if context else (FALLBACK_USER_MAX_NUM_CTX, "the default cap")
            )
        if asked > cap:
            raise ForbiddenError(f"num_ctx={asked} is more than {cap} ({source}); this needs an admin key")


__all__ = [
    "CLOUD_REFUSED",
    "CLOUD_TOOLS",
    "FALLBACK_USER_MAX_NUM_CTX",
    "OptionRefusedError",
    "Policy",
    "RouteNeeds",
    "is_cloud_model",
    "plain_seconds",
    "whole_number",
]
