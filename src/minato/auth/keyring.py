"""The configured keys: read from the settings and the keys files, kept only as SHA-256 digests, and
compared in constant time against every key; and the safe-by-default rule for serving beyond loopback."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from minato.auth.caller import Caller, Role
from minato.auth.keys import KEYS_FILE_VARIABLE, digest_of, read_keys_file
from minato.errors import SettingsError
from minato.settings import Settings


@dataclass
class Keyring:
    """The configured keys, as digests, each with the caller it identifies."""

    callers: list[tuple[bytes, Caller]] = field(default_factory=list)
    _bound: int = 0
    """``MINATO_KEY_MAX_CONCURRENT``: the bound of every key that names none of its own."""

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (and so every request needs one)."""
        return bool(self.callers)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """Read the keys from the settings and the keys files; raise :class:`SettingsError` on bad entries."""
        keyring = cls()
        rate = settings.rate_limit_per_minute
        keyring._bound = settings.key_max_concurrent
        keyring._add(settings.api_keys, Role.USER, "MINATO_API_KEYS", rate)
        keyring._add(settings.admin_keys, Role.ADMIN, "MINATO_ADMIN_KEYS", rate)
        scrapers = len(keyring.callers)
        keyring._add(settings.metrics_keys, Role.METRICS, "MINATO_METRICS_KEYS", 0)
        others = {digest for digest, _ in keyring.callers[:scrapers]}
        if any(digest in others for digest, _ in keyring.callers[scrapers:]):
            # The higher role would win, and that key could no longer read /metrics.
            raise SettingsError("MINATO_METRICS_KEYS: a metrics key must not also be a user or admin key")
        if settings.api_keys_file:
            try:
                lines = Path(settings.api_keys_file).read_text().splitlines()
            except OSError as exc:
                raise SettingsError(f"MINATO_API_KEYS_FILE: cannot read {settings.api_keys_file}: {exc}") from None
            keyring._add([line.split("#", 1)[0] for line in lines], Role.USER, "MINATO_API_KEYS_FILE", rate)
        if settings.keys_file:
            unnamed = {digest for digest, _ in keyring.callers}
            for named in read_keys_file(settings.keys_file):
                if named.digest in unnamed:  # which scope and limits would apply is anyone's guess
                    raise SettingsError(
                        f"{KEYS_FILE_VARIABLE}: keys.{named.name}.key: also configured without a name "
                        "(MINATO_API_KEYS, MINATO_ADMIN_KEYS or MINATO_API_KEYS_FILE)"
                    )
                caller = Caller(
                    fingerprint=named.digest.hex()[:12],
                    role=Role.ADMIN if named.admin else Role.USER,
                    name=named.name,
                    models=named.models,
                    requests_per_minute=rate if named.requests_per_minute is None else named.requests_per_minute,
                    tokens_per_day=named.tokens_per_day,
                    max_concurrent=settings.key_max_concurrent
                    if named.max_concurrent is None
                    else named.max_concurrent,
                    weight=named.weight,
                )
                keyring.callers.append((named.digest, caller))
        return keyring

    def _add(self, entries: Iterable[str], role: Role, variable: str, requests_per_minute: int) -> None:
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                digest = digest_of(entry)
            except ValueError as exc:
                raise SettingsError(f"{variable}: {exc}") from None
            fingerprint = digest.hex()[:12]
            caller = Caller(
                fingerprint=fingerprint,
                role=role,
                name=fingerprint,
                requests_per_minute=requests_per_minute,
                max_concurrent=self._bound if role is not Role.METRICS else 0,
            )
            self.callers.append((digest, caller))

    def identify(self, presented: str) -> Caller | None:
        """Return the caller owning ``presented``, checking every key so timing reveals nothing.

        A key given both as a user and as an admin key is an admin key.
        """
        digest = hashlib.sha256(presented.encode()).digest()
        found: Caller | None = None
        for known, caller in self.callers:
            if hmac.compare_digest(known, digest) and (found is None or caller.role > found.role):
                found = caller
        return found

    def callers_by_name(self) -> dict[str, Caller]:
        """Every key that may generate, by its name (a fingerprint for a key without one), in the order
        configured; a key given both as a user and as an admin key is its admin caller."""
        named: dict[str, Caller] = {}
        for _, caller in self.callers:
            if caller.role is Role.METRICS:
                continue
            known = named.get(caller.name)
            if known is None or caller.role > known.role:
                named[caller.name] = caller
        return named


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


__all__ = ["Keyring", "refuse_unsafe_start"]
