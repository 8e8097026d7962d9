"""Who may call Minato: API keys with two roles, model scopes, per-key rate limits and token quotas
(kept by the shared state, :mod:`minato.state`), and the safe-by-default rule.

Keys are kept only as SHA-256 digests, and a presented key is looked up by its digest;
logs and metrics carry the key's name (from the keys file) or a short fingerprint of its digest,
never a key.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Scope

from minato.auth.caller import ANONYMOUS, Caller
from minato.auth.keyring import Keyring
from minato.core.policy import Policy, RouteNeeds
from minato.errors import StateUnavailableError
from minato.observability.record import record_of
from minato.settings import Settings
from minato.state.windows import Bucket, Standing

if TYPE_CHECKING:
    from minato.web.runtime import RuntimeSlot

logger = structlog.get_logger("minato.security")

#: Route ``opt`` keys: a route open to anyone, and a route only admins may call. Exemptions are
#: made by handler (or by the router a handler belongs to), never by path: a path prefix test lets
#: look-alike paths (``/docsanything``, ``/%64ocs``) through.
PUBLIC: Final = "public"
ADMIN: Final = "admin"
PROBE: Final = "probe"
#: Route ``opt`` key: the metrics scrape, which needs an admin or a metrics key (see :mod:`minato.core.policy`).
METRICS: Final = "metrics"
#: Where the guard leaves the identified caller in the ASGI scope's state.
CALLER_STATE_KEY: Final = "minato.caller"
#: Where the guard leaves the tokens a key with a quota may still generate.
TOKENS_LEFT_KEY: Final = "minato.tokens_left"
#: Where the guard leaves where the key's request bucket and token quota stood (a Bucket, a Standing;
#: absent: the key has no such limit), for the rate-limit headers (minato.web.limit_headers).
RATE_STATE_KEY: Final = "minato.rate"
QUOTA_STATE_KEY: Final = "minato.quota"
WWW_AUTHENTICATE: Final = 'Key realm="minato", Bearer realm="minato"'
_SCHEMES: Final = ("key", "bearer")


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a request carries: ``Authorization: Key|Bearer <key>`` or ``X-API-Key``."""
    header = connection.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in _SCHEMES and value.strip():
            return value.strip()
    return connection.headers.get("x-api-key") or None


#: The key check of a request, given the route it matched (its ``opt`` says public, probe or admin).
Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def _needs(opt: dict[str, Any]) -> str:
    """What a route's ``opt`` says it needs of a caller's role."""
    if opt.get(METRICS):
        return RouteNeeds.METRICS
    return RouteNeeds.ADMIN if opt.get(ADMIN) else RouteNeeds.USER


def make_guard(settings: Settings, keyring: Keyring, slot: RuntimeSlot, policy: Policy) -> Guard:
    """Build the check every route runs before its handler: the key, its role, its rate and its token
    quota (kept by the running runtime's limiter and quota, found in ``slot``). The app's
    ``before_request`` hook calls it first."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        opt = handler.opt
        # Configured keys are always enforced (MINATO_AUTH only governs having none). Asked per request:
        # a reload may give a keyless deployment its first key, and never takes a keyed one's last.
        if not keyring.enabled or opt.get(PUBLIC) or (opt.get(PROBE) and settings.open_probes):
            return
        presented = presented_key(connection)
        caller = keyring.identify(presented) if presented else None
        if caller is None:
            raise NotAuthorizedException(
                "a valid API key is required (Authorization: Key <key>, Bearer <key>, or X-API-Key)"
                if presented is None
                else "the API key is not valid",
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        connection.scope["state"][CALLER_STATE_KEY] = caller
        record = record_of(connection.scope)
        if record is not None:
            # Also names the key on every line logged during the request (add_request_facts).
            record.caller = caller
        policy.check_route(caller, _needs(opt))
        state = connection.scope["state"]
        # Both limits are asked before either refuses, so a 429 reports both (minato.web.limit_headers
        # renders what the guard leaves in the scope's state; nothing is asked twice).
        rate = standing = None
        if caller.requests_per_minute:
            rate = state[RATE_STATE_KEY] = await _rate(slot, caller)
        if caller.tokens_per_day:
            standing = state[QUOTA_STATE_KEY] = await _standing(slot, caller)
        if rate is not None and rate.wait:
            raise TooManyRequestsException(
                f"more than {caller.requests_per_minute} requests per minute for this key",
                headers={"Retry-After": _seconds(rate.wait)},
            )
        if standing is not None:
            if standing.wait or not standing.left:
                raise TooManyRequestsException(
                    f"this key's quota of {caller.tokens_per_day} generated tokens per day (a rolling 24 h "
                    "window) is used up",
                    headers={"Retry-After": _seconds(standing.wait or 60.0)},
                )
            # What this request's answer may generate at most (see minato.state.windows: the bound on overshoot).
            state[TOKENS_LEFT_KEY] = standing.left

    return guard


async def _rate(slot: RuntimeSlot, caller: Caller) -> Bucket:
    """Take one request from the key's bucket."""
    try:
        return await slot.runtime.limiter.check(caller.fingerprint, caller.requests_per_minute)
    except StateUnavailableError:  # the shared state cannot answer: a 503, as for a turn
        raise
    except Exception:  # the limiter fails closed: no answer is a refusal
        logger.exception("rate_limiter_failed")
        return Bucket(60.0, 0, 60.0)


async def _standing(slot: RuntimeSlot, caller: Caller) -> Standing:
    """Where the key stands against its token quota."""
    try:
        return await slot.runtime.quota.check(caller)
    except StateUnavailableError:
        raise
    except Exception:  # as the limiter: no answer is a refusal
        logger.exception("token_quota_failed")
        return Standing(60.0, 0)


def _seconds(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


def caller_of(scope: Scope) -> Caller | None:
    """The caller the guard identified for the request in ``scope`` (none on a keyless deployment)."""
    caller: Caller | None = scope.get("state", {}).get(CALLER_STATE_KEY)
    return caller


def tokens_left(scope: Scope) -> int | None:
    """The tokens the caller's quota still allows when its request began (``None``: no quota)."""
    left: int | None = scope.get("state", {}).get(TOKENS_LEFT_KEY)
    return left


def make_caller_provider(keyring: Keyring) -> Any:
    """Build the provider of the ``caller`` dependency: who sent this request."""
    if not keyring.enabled and not keyring.files:  # keyless for good: no file can give it a key

        def anonymous() -> Caller:
            return ANONYMOUS

        return anonymous

    def identified(request: Request[Any, Any, Any]) -> Caller:
        caller: Caller | None = request.scope["state"].get(CALLER_STATE_KEY)
        if caller is None and not keyring.enabled:  # a deployment without keys (yet: see the guard)
            return ANONYMOUS
        if caller is None:  # a public route asked who is calling: nobody it may trust
            raise NotAuthorizedException("a valid API key is required", headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        return caller

    return identified


__all__ = [
    "ADMIN",
    "CALLER_STATE_KEY",
    "PROBE",
    "PUBLIC",
    "QUOTA_STATE_KEY",
    "RATE_STATE_KEY",
    "Guard",
    "caller_of",
    "make_caller_provider",
    "make_guard",
    "presented_key",
    "tokens_left",
]
