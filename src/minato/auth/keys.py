"""Keys as configured: plain or ``sha256:<hex>`` entries, and the named keys of ``MINATO_KEYS_FILE``.

The keys file is TOML, one table per key::

    [keys.alice]
    key = "sha256:<hex>"            # or the plain key
    role = "user"                   # or "admin"
    models = ["qwen2.5:*"]          # glob patterns on canonical model names; default: every model
    requests_per_minute = 60        # default: MINATO_RATE_LIMIT_PER_MINUTE (0: unlimited)
    tokens_per_day = 200000         # generated tokens per rolling 24 h; default: unlimited
    max_concurrent = 2              # generations running at once; default: MINATO_KEY_MAX_CONCURRENT (0: none)
    weight = 1                      # its share of the turns when keys wait for a slot; default: 1

Every mistake stops start-up with a message naming the table and the field, never the key.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from minato.errors import SettingsError
from minato.ollama.names import canonical_model_name

KEYS_FILE_VARIABLE: Final = "MINATO_KEYS_FILE"
ROLES: Final = ("user", "admin")
_HASHED: Final = re.compile(r"sha256:([0-9a-fA-F]{64})")
#: A name labels log lines and metrics, so it must be safe in both.
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_WILDCARDS: Final = frozenset("*?[")


def digest_of(entry: str) -> bytes:
    """The SHA-256 digest a configured key stands for: ``sha256:<hex>`` as given, a plain key hashed.

    Raises:
        ValueError: ``sha256:`` without 64 hex digits after it.
    """
    if entry.startswith("sha256:"):
        hashed = _HASHED.fullmatch(entry)
        if hashed is None:
            raise ValueError("'sha256:' must be followed by 64 hex digits")
        return bytes.fromhex(hashed[1])
    return hashlib.sha256(entry.encode()).digest()


class _Entry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[keys.<name>]`` table as written."""

    key: str
    role: str = "user"
    models: list[str] | None = None
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tokens_per_day: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_concurrent: Annotated[int, msgspec.Meta(ge=0)] | None = None
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


@dataclass(frozen=True, slots=True)
class NamedKey:
    """A key from the keys file, checked."""

    name: str
    digest: bytes
    admin: bool
    models: tuple[str, ...] | None
    """Glob patterns on canonical model names; ``None``: every model."""
    requests_per_minute: int | None
    """``None``: ``MINATO_RATE_LIMIT_PER_MINUTE``; 0: unlimited."""
    tokens_per_day: int
    """0: unlimited."""
    max_concurrent: int | None
    """Generations running at once; ``None``: ``MINATO_KEY_MAX_CONCURRENT``; 0: no bound."""
    weight: int
    """Its share of the turns when keys wait for a slot (1 to 1000)."""


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A key as ``minato keys list`` and ``GET /keys`` show it: never its secret, nor its digest."""

    name: str
    """The keys file's name for it; a plain key's (``MINATO_API_KEYS``...) fingerprint."""
    role: str
    """``user``, ``admin`` or ``metrics``."""
    models: list[str] | None
    """Glob patterns on canonical model names; ``null``: every model."""
    requests_per_minute: int | None
    """0: unlimited; ``null`` (in the file): ``MINATO_RATE_LIMIT_PER_MINUTE``."""
    tokens_per_day: int
    """Generated tokens per rolling 24 h; 0: unlimited."""
    max_concurrent: int | None
    """Generations running at once; 0: no bound; ``null`` (in the file): ``MINATO_KEY_MAX_CONCURRENT``."""
    weight: int
    """Its share of the turns when keys wait for a slot."""

    @classmethod
    def of(cls, key: NamedKey) -> KeyInfo:
        """A key as the file has it (``null``: the deployment's default applies)."""
        return cls(
            name=key.name,
            role="admin" if key.admin else "user",
            models=None if key.models is None else list(key.models),
            requests_per_minute=key.requests_per_minute,
            tokens_per_day=key.tokens_per_day,
            max_concurrent=key.max_concurrent,
            weight=key.weight,
        )


def is_key_name(name: str) -> bool:
    """Whether ``name`` may name a key: it labels log lines and metrics, so it must be safe in both."""
    return _SAFE_NAME.fullmatch(name) is not None


def read_keys_file(path: str) -> list[NamedKey]:
    """Read and check the keys file; raise :class:`SettingsError` naming the table and field at fault."""
    try:
        with Path(path).open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"{KEYS_FILE_VARIABLE}: cannot read {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{KEYS_FILE_VARIABLE}: {path} is not valid TOML ({exc})") from None
    unknown = sorted(set(document) - {"keys"})
    if unknown:
        raise SettingsError(f"{KEYS_FILE_VARIABLE}: unknown table '{unknown[0]}' (the file holds [keys.<name>] tables)")
    tables = document.get("keys", {})
    if not isinstance(tables, dict):
        raise SettingsError(f"{KEYS_FILE_VARIABLE}: keys: must be tables, one [keys.<name>] per key")
    named: list[NamedKey] = []
    owners: dict[bytes, str] = {}
    for name, table in tables.items():
        key = _checked(name, table)
        if key.digest in owners:
            raise SettingsError(f"{KEYS_FILE_VARIABLE}: keys.{name}.key: the same key as keys.{owners[key.digest]}")
        owners[key.digest] = name
        named.append(key)
    return named


def _checked(name: str, table: Any) -> NamedKey:
    where = f"{KEYS_FILE_VARIABLE}: keys.{name}"
    if not is_key_name(name):
        raise SettingsError(f"{where}: a key's name must be 1 to 64 letters, digits, '_', '.' or '-'")
    try:
        entry = msgspec.convert(table, type=_Entry)
    except msgspec.ValidationError as exc:
        text, sep, field = str(exc).rpartition(" - at `$.")
        raise SettingsError(f"{where}.{field.rstrip('`')}: {text}" if sep else f"{where}: {exc}") from None
    if entry.role not in ROLES:
        raise SettingsError(f"{where}.role: must be 'user' or 'admin'")
    if not entry.key.strip():
        raise SettingsError(f"{where}.key: must not be empty")
    try:
        digest = digest_of(entry.key.strip())
    except ValueError as exc:
        raise SettingsError(f"{where}.key: {exc}") from None
    return NamedKey(
        name=name,
        digest=digest,
        admin=entry.role == "admin",
        models=None if entry.models is None else _patterns(where, entry.models),
        requests_per_minute=entry.requests_per_minute,
        tokens_per_day=entry.tokens_per_day,
        max_concurrent=entry.max_concurrent,
        weight=entry.weight,
    )


def _patterns(where: str, models: list[str]) -> tuple[str, ...]:
    """Patterns as they are matched: on canonical names, which are lower case.

    A pattern without a wildcard is a model name, so it is spelt the canonical way (``llama3.2`` is
    ``llama3.2:latest``, as it is for Ollama).
    """
    if not models:
        raise SettingsError(f"{where}.models: must name at least one pattern (leave it out for every model)")
    patterns = []
    for pattern in models:
        text = pattern.strip()
        if not text:
            raise SettingsError(f"{where}.models: a pattern must not be empty")
        patterns.append(text.lower() if _WILDCARDS & set(text) else canonical_model_name(text))
    return tuple(patterns)


__all__ = ["KEYS_FILE_VARIABLE", "ROLES", "KeyInfo", "NamedKey", "digest_of", "is_key_name", "read_keys_file"]
