"""The configured keys: read from the settings and the keys files, kept only as SHA-256 digests, and
looked up by the digest of the key presented (no timing depends on a key, only on digests); and the
safe-by-default rule for serving beyond loopback."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from minato.auth.caller import Caller, Role
from minato.auth.keys import KEYS_FILE_VARIABLE, digest_of, read_keys_file
from minato.errors import SettingsError
from minato.settings import Settings

#: What a keys file looked like when it was last read: ``(st_mtime_ns, st_size, st_ino)``, or ``None``
#: when it could not be seen. An editor that saves in place changes the first two; one that renames a
#: new file over the old one (as ``minato keys`` does) changes the inode.
Stamp = tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class Reload:
    """What a reload did: the names it added, removed and changed, or why the keys in force stayed."""

    refused: str | None = None
    """Why the keys in force stay as they were (never a key); ``None``: the new keys are in force."""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    keys: int = 0
    """The keys in force afterwards."""


@dataclass
class Keyring:
    """The configured keys, as digests, each with the caller it identifies.

    :meth:`reload` reads the keys files again and swaps :attr:`callers` in one assignment: a request
    that has been identified keeps its :class:`Caller`, and :meth:`identify` reads the list once.
    """

    callers: list[tuple[bytes, Caller]] = field(default_factory=list)
    settings: Settings | None = None
    """Where the keys came from (``None``: a keyring built by hand, which has nothing to reload)."""
    _seen: tuple[Stamp, ...] = ()
    _index: tuple[list[tuple[bytes, Caller]], dict[bytes, Caller]] | None = None
    """The callers by digest, and the list they were built from (rebuilt once a reload swapped it)."""

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (and so every request needs one)."""
        return bool(self.callers)

    @property
    def files(self) -> tuple[str, ...]:
        """The keys files it reads again when they change (``MINATO_KEYS_FILE``, ``MINATO_API_KEYS_FILE``)."""
        if self.settings is None:
            return ()
        return tuple(path for path in (self.settings.keys_file, self.settings.api_keys_file) if path)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """Read the keys from the settings and the keys files; raise :class:`SettingsError` on bad entries."""
        keyring = cls(settings=settings)
        keyring._seen = keyring.stamps()  # before reading: a change made meanwhile is seen by the next look
        keyring.callers = read_callers(settings)
        return keyring

    def stamps(self) -> tuple[Stamp, ...]:
        """What each keys file looks like on disk now (a ``stat`` each: cheap enough to ask every second)."""
        return tuple(_stamp(path) for path in self.files)

    def changed(self) -> bool:
        """Whether a keys file changed on disk since it was last read (or last failed to be)."""
        return bool(self.files) and self.stamps() != self._seen

    def reload(self) -> Reload:
        """Read the keys again and put them in force, unless they do not parse or would leave no key
        where keys were in force (a keyed Minato never opens up): then the keys in force stay."""
        if self.settings is None:
            return Reload(keys=len(self.callers))
        self._seen = self.stamps()  # a file that fails is not read (nor its failure logged) again until it changes
        try:
            callers = read_callers(self.settings)
        except SettingsError as exc:
            return Reload(refused=str(exc), keys=len(self.callers))
        if self.callers and not callers:
            return Reload(
                refused="the keys files hold no key: the keys in force stay (remove keys one by one, or restart)",
                keys=len(self.callers),
            )
        old = {caller.name: (digest, caller) for digest, caller in self.callers}
        new = {caller.name: (digest, caller) for digest, caller in callers}
        self.callers = callers
        return Reload(
            added=tuple(sorted(new.keys() - old.keys())),
            removed=tuple(sorted(old.keys() - new.keys())),
            changed=tuple(sorted(name for name in new.keys() & old.keys() if new[name] != old[name])),
            keys=len(callers),
        )

    def identify(self, presented: str) -> Caller | None:
        """Return the caller owning ``presented``: its SHA-256 digest looked up among the configured ones.

        A look-up, not a comparison with every key: with a thousand keys that cost 150 µs a request. It
        reveals nothing a comparison in constant time would hide: what is looked up is a digest, so how
        long the look-up takes depends on how the attacker's digest relates to a stored one, which no one
        can steer without a preimage of SHA-256. A key given both as a user and as an admin key is an
        admin key.
        """
        callers = self.callers  # one read of the list: a reload swaps it whole
        index = self._index
        if index is None or index[0] is not callers:
            index = self._index = (callers, _by_digest(callers))
        return index[1].get(hashlib.sha256(presented.encode()).digest())

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


def _by_digest(callers: list[tuple[bytes, Caller]]) -> dict[bytes, Caller]:
    index: dict[bytes, Caller] = {}
    for digest, caller in callers:
        known = index.get(digest)
        if known is None or caller.role > known.role:
            index[digest] = caller
    return index


def read_callers(settings: Settings) -> list[tuple[bytes, Caller]]:
    """Every configured key with its caller: the settings' lists, then the keys files; raise
    :class:`SettingsError` on bad entries (naming the variable, the table and the field, never a key)."""
    rate = settings.rate_limit_per_minute
    bound = settings.key_max_concurrent
    callers = _plain(settings.api_keys, Role.USER, "MINATO_API_KEYS", rate, bound)
    callers += _plain(settings.admin_keys, Role.ADMIN, "MINATO_ADMIN_KEYS", rate, bound)
    others = {digest for digest, _ in callers}
    scrapers = _plain(settings.metrics_keys, Role.METRICS, "MINATO_METRICS_KEYS", 0, 0)
    if any(digest in others for digest, _ in scrapers):
        # The higher role would win, and that key could no longer read /metrics.
        raise SettingsError("MINATO_METRICS_KEYS: a metrics key must not also be a user or admin key")
    callers += scrapers
    if settings.api_keys_file:
        try:
            lines = Path(settings.api_keys_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"MINATO_API_KEYS_FILE: cannot read {settings.api_keys_file}: {exc}") from None
        callers += _plain([line.split("#", 1)[0] for line in lines], Role.USER, "MINATO_API_KEYS_FILE", rate, bound)
    if settings.keys_file:
        unnamed = {digest for digest, _ in callers}
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
                max_concurrent=bound if named.max_concurrent is None else named.max_concurrent,
                weight=named.weight,
            )
            callers.append((named.digest, caller))
    return callers


def _plain(
    entries: Iterable[str], role: Role, variable: str, requests_per_minute: int, bound: int
) -> list[tuple[bytes, Caller]]:
    """The keys of a plain list, named by their fingerprints."""
    callers = []
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
            max_concurrent=bound,
        )
        callers.append((digest, caller))
    return callers


def _stamp(path: str) -> Stamp:
    try:
        seen = os.stat(path)
    except OSError:
        return None
    return (seen.st_mtime_ns, seen.st_size, seen.st_ino)


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


__all__ = ["Keyring", "Reload", "Stamp", "read_callers", "refuse_unsafe_start"]
