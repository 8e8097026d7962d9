"""``GET /usage``: what a key used over the rolling 24 h and where it stands against its limits; an admin
key may ask for any key's (``?key=NAME``) and for every key's (``GET /usage/keys``).

Whose usage a caller may see is the policy's to say (:meth:`~minato.core.policy.Policy.check_usage_of`):
a user key asking for another key's is refused (403) whether that key exists or not, so a user key
learns no other key's name; an admin naming a key nobody configured gets a 404.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Final

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from minato.auth.caller import ANONYMOUS, Caller
from minato.auth.keyring import Keyring
from minato.core.policy import Policy
from minato.core.usage_report import KeysUsage, KeyUsage, UsageSources, usage_of
from minato.errors import KeyNotFoundError
from minato.web.auth import ADMIN
from minato.web.rendering import error_spec
from minato.web.runtime import runtime_of

KeyName = Annotated[
    str | None,
    Parameter(
        description="Whose usage: a key's name from the keys file (or the fingerprint of a key without one). "
        "An admin key may name any key; a user key only itself.",
        min_length=1,
        max_length=256,
    ),
]
_RESPONSES: Final[dict[int, ResponseSpec]] = {
    403: error_spec("A user key named another key with `key=` (or a metrics key asked)."),
    404: error_spec("An admin key named a key that is not configured."),
}
_get = partial(get, tags=["usage"])


def _sources(request: Request[Any, Any, Any]) -> UsageSources:
    runtime = runtime_of(request)
    state = runtime.state
    admission = runtime.admission
    return UsageSources(
        state.usage, runtime.quota, runtime.limiter, state.concurrency, lambda caller: admission.waiting_of(caller.name)
    )


def _everyone(keyring: Keyring) -> dict[str, Caller]:
    """Every key that may generate, by name; without keys, the one anonymous caller."""
    return keyring.callers_by_name() if keyring.enabled else {ANONYMOUS.name: ANONYMOUS}


@_get(
    "/usage",
    operation_id="Usage",
    summary="What a key used over the last 24 h",
    description=(
        "Requests and tokens (Ollama's own counts) over the rolling 24 h, in total and by model, on every "
        "route and door, and where the key stands against its token quota, its request rate and its bound "
        "on generations at once. Without `key`: the calling key's."
    ),
    responses=_RESPONSES,
)
async def usage(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Caller],
    policy: NamedDependency[Policy],
    keyring: NamedDependency[Keyring],
    key: KeyName = None,
) -> KeyUsage:
    """The usage of the calling key, or of the key ``key`` names (admin keys)."""
    policy.check_usage_of(caller, key)
    whose = caller
    if key is not None and key != caller.name:
        found = _everyone(keyring).get(key)
        if found is None:
            raise KeyNotFoundError(f"no configured key is named '{key}'")
        whose = found
    [report] = await usage_of([whose], _sources(request))
    return report


@_get(
    "/usage/keys",
    operation_id="UsageOfKeys",
    summary="What every key used over the last 24 h",
    description="The `GET /usage` report of every configured key (those that used nothing included), by name.",
    opt={ADMIN: True},
)
async def usage_of_keys(request: Request[Any, Any, Any], keyring: NamedDependency[Keyring]) -> KeysUsage:
    """Every configured key's usage, in the order the keys are configured."""
    return KeysUsage(keys=await usage_of(list(_everyone(keyring).values()), _sources(request)))


__all__ = ["usage", "usage_of_keys"]
