"""What a key may ask through a door: its models, the operator's cloud account, and the limits user keys live by.

Every check here runs before anything reaches Ollama, on the fields :mod:`minato.doors.body` read.
"""

from __future__ import annotations

from typing import Any, Final

from minato.doors.body import BodyRefusedError, DoorBody
from minato.errors import ForbiddenError
from minato.generation import check_context_size
from minato.params import check_user_keep_alive
from minato.security import Caller, require_model_in_scope
from minato.settings import Settings
from minato.upstream import Ollama
from minato.upstream.options import parse_keep_alive

CLOUD_REFUSED: Final = (
    "cloud models and Ollama's account routes spend or change the operator's ollama.com account; "
    "Minato refuses them unless MINATO_ALLOW_CLOUD=true"
)


def is_cloud_model(name: str) -> bool:
    """Whether Ollama would send ``name`` to ollama.com (a ``:cloud`` or ``-cloud`` tag or name)."""
    bare = name.strip().lower().split("@", 1)[0]
    return bare.endswith((":cloud", "-cloud"))


def check_models(caller: Caller, settings: Settings, names: list[str]) -> None:
    """Refuse a model outside the key's patterns, and a cloud model unless the operator allows them."""
    for name in names:
        if is_cloud_model(name) and not settings.allow_cloud:
            raise ForbiddenError(f"model '{name}': {CLOUD_REFUSED}")
        require_model_in_scope(caller, name)


def check_account_route(caller: Caller, settings: Settings) -> None:
    """Ollama's account and cloud routes: refused for every key, or admin-only when cloud is allowed."""
    if not settings.allow_cloud:
        raise ForbiddenError(CLOUD_REFUSED)
    if not caller.is_admin:
        raise ForbiddenError("Ollama's account routes need an admin key")


def keep_alive_of(body: DoorBody) -> float | str | None:
    """The body's ``keep_alive`` as Ollama reads it: seconds as a number, or a Go duration string."""
    value: Any = body.field("keep_alive", float | str)
    if value is None or isinstance(value, float):
        return value
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise BodyRefusedError(f"keep_alive: {exc}") from None


async def check_user_limits(caller: Caller, settings: Settings, upstream: Ollama, body: DoorBody) -> None:
    """A user key's ``keep_alive`` and ``num_ctx``, as on Minato's own routes (admins are not limited)."""
    if caller.is_admin:
        return
    alive = keep_alive_of(body)
    if alive is not None:
        check_user_keep_alive(alive, settings)
    asked = body.object("options").get("num_ctx")
    if isinstance(asked, int) and not isinstance(asked, bool):
        await check_context_size(upstream, settings, body.model, asked)


__all__ = ["CLOUD_REFUSED", "check_account_route", "check_models", "check_user_limits", "is_cloud_model"]
