"""Who may call Minato: API keys with two roles, per-key rate limits, and the safe-by-default rule.

Keys are kept only as SHA-256 digests and compared in constant time against every configured key;
logs carry a short fingerprint of the digest, never a key.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler

from minato.errors import SettingsError
from minato.settings import Settings

logger = structlog.get_logger("minato.security")

#: Route ``opt`` keys: a route open to anyone, and a route only admins may call. Exemptions are
#: made by handler (or by the router a handler belongs to), never by path: a path prefix test lets
#: look-alike paths (``/docsanything``, ``/%64ocs``) through.
PUBLIC: Final = "public"
ADMIN: Final = "admin"
PROBE: Final = "probe"
#: Where the guard leaves the identified caller in the ASGI scope's state.
CALLER_STATE_KEY: Final = "minato.caller"
WWW_AUTHENTICATE: Final = 'Key realm="minato", Bearer realm="minato"'
_HASHED: Final = re.compile(r"sha256:([0-9a-fA-F]{64})")
_SCHEMES: Final = ("key", "bearer")


class Role(enum.IntEnum):
    """What a key may do; a higher role may do everything a lower one may."""

    USER = 1
    ADMIN = 2


@dataclass(frozen=True)
class Caller:
    """An authenticated caller.

    ``fingerprint`` names the key (12 hex digits of its digest) in logs and owns its conversations;
    it is empty for the anonymous caller of a keyless deployment.
    """

    fingerprint: str
    role: Role

    @property
    def is_admin(self) -> bool:
        """Whether the caller may manage models and see every key's conversations."""
        return self.role >= Role.ADMIN


#: Everyone, in a deployment without keys: as today, free to do anything (such a deployment is only
#: served on loopback, or behind something that authenticates).
ANONYMOUS: Final = Caller(fingerprint="", role=Role.ADMIN)


@dataclass
class Keyring:
    """The configured keys, as digests."""

    digests: list[tuple[bytes, Role]] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (and so every request needs one)."""
        return bool(self.digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """Read the keys from the settings and the keys file; raise :class:`SettingsError` on bad entries."""
        keyring = cls()
        keyring._add(settings.api_keys, Role.USER, "MINATO_API_KEYS")
        keyring._add(settings.admin_keys, Role.ADMIN, "MINATO_ADMIN_KEYS")
        if settings.api_keys_file:
            try:
                lines = Path(settings.api_keys_file).read_text().splitlines()
            except OSError as exc:
                raise SettingsError(f"MINATO_API_KEYS_FILE: cannot read {settings.api_keys_file}: {exc}") from None
            keyring._add([line.split("#", 1)[0] for line in lines], Role.USER, "MINATO_API_KEYS_FILE")
        return keyring

    def _add(self, entries: Iterable[str], role: Role, variable: str) -> None:
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry.startswith("sha256:"):
                hashed = _HASHED.fullmatch(entry)
                if hashed is None:
                    raise SettingsError(f"{variable}: 'sha256:' must be followed by 64 hex digits")
                self.digests.append((bytes.fromhex(hashed[1]), role))
            else:
                self.digests.append((hashlib.sha256(entry.encode()).digest(), role))

    def identify(self, presented: str) -> Caller | None:
        """Return the caller owning ``presented``, checking every key so timing reveals nothing."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: Role | None = None
        for known, role in self.digests:
            if hmac.compare_digest(known, digest) and (found is None or role > found):
                found = role
        return None if found is None else Caller(fingerprint=digest.hex()[:12], role=found)


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> float:
        """Take one request from ``key``'s bucket; return 0, or the seconds to wait when it is empty."""
        now = time.monotonic()
        rate = self.per_minute / 60.0
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
        return (1.0 - tokens) / rate


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a request carries: ``Authorization: Key|Bearer <key>`` or ``X-API-Key``."""
    header = connection.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in _SCHEMES and value.strip():
            return value.strip()
    return connection.headers.get("x-api-key") or None


def make_guard(settings: Settings, keyring: Keyring, limiter: RateLimiter | None) -> Any:
    """Build the guard every route runs before its handler (``limiter``: none means no rate limit)."""
    required = keyring.enabled  # configured keys are always enforced; MINATO_AUTH only governs having none

    # Async on purpose: Litestar runs a sync guard in a worker thread, once per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        opt = handler.opt
        if not required or opt.get(PUBLIC) or (opt.get(PROBE) and settings.open_probes):
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
        structlog.contextvars.bind_contextvars(key=caller.fingerprint)
        connection.scope["state"][CALLER_STATE_KEY] = caller
        if opt.get(ADMIN) and caller.role < Role.ADMIN:
            raise PermissionDeniedException("this route needs an admin key")
        if limiter is not None:
            try:
                wait = limiter.check(caller.fingerprint)
            except Exception:  # the limiter fails closed: no answer is a refusal
                logger.exception("rate_limiter_failed")
                wait = 60.0
            if wait:
                raise TooManyRequestsException(
                    f"more than {settings.rate_limit_per_minute} requests per minute for this key",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )

    return guard


def make_caller_provider(keyring: Keyring) -> Any:
    """Build the provider of the ``caller`` dependency: who sent this request."""
    if not keyring.enabled:

        def anonymous() -> Caller:
            return ANONYMOUS

        return anonymous

    def identified(request: Request[Any, Any, Any]) -> Caller:
        caller: Caller | None = request.scope["state"].get(CALLER_STATE_KEY)
        if caller is None:  # a public route asked who is calling: nobody it may trust
            raise NotAuthorizedException("a valid API key is required", headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        return caller

    return identified


def refuse_unsafe_start(settings: Settings, host: str, keyring: Keyring) -> str | None:
    """Return why Minato must not start on ``host`` with these settings, or ``None`` if it may."""
    if keyring.enabled or settings.auth == "disabled" or _is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach it could use your Ollama. "
        "Set MINATO_API_KEYS (or MINATO_API_KEYS_FILE / MINATO_ADMIN_KEYS), bind to 127.0.0.1, or set "
        "MINATO_AUTH=disabled if something in front of Minato authenticates callers."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "CALLER_STATE_KEY",
    "PROBE",
    "PUBLIC",
    "Caller",
    "Keyring",
    "RateLimiter",
    "Role",
    "make_caller_provider",
    "make_guard",
    "presented_key",
    "refuse_unsafe_start",
]
