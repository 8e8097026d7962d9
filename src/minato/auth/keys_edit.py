"""Editing the keys file (``minato keys add`` and ``revoke``): a table added or removed, everything
else kept as written (other tables, comments, layout), and the file replaced atomically.

The new text is written to a temporary file beside the keys file (mode 0600), flushed to disk, read
back with :func:`~minato.auth.keys.read_keys_file` (the check a start-up or a reload makes), and only
then renamed over the keys file: a running Minato sees either the old file or the new one, and never a
file it would refuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import tomlkit
from tomlkit.items import Comment, Table, Whitespace
from tomlkit.toml_document import TOMLDocument

from minato.auth.keys import KEYS_FILE_VARIABLE, is_key_name, read_keys_file
from minato.errors import SettingsError

#: What every key ``minato keys add`` makes starts with, so that a leaked one is recognisable (by
#: people and by secret scanners); 32 random bytes follow.
KEY_PREFIX: Final = "minato_"
KEY_BYTES: Final = 32
FILE_MODE: Final = 0o600


class KeyNameTakenError(SettingsError):
    """The keys file already has a key of that name."""


class UnknownKeyNameError(SettingsError):
    """The keys file has no key of that name."""


@dataclass(frozen=True, slots=True)
class NewKey:
    """What ``minato keys add`` writes for a key besides its digest (``None``: the deployment's default)."""

    name: str
    role: str = "user"
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None
    weight: int | None = None


def add_key(path: str, new: NewKey) -> str:
    """Add a key named ``new.name`` to the keys file at ``path`` (created if absent); return the key,
    of which the file keeps only the ``sha256:`` digest.

    Raises:
        KeyNameTakenError: the file has a key of that name.
        SettingsError: the name is not a key name, the file cannot be read or written, or it (or the
            new key's table) would not pass the keys file's checks: then nothing is written.
    """
    if not is_key_name(new.name):
        raise SettingsError(f"'{new.name}' is not a key name: 1 to 64 letters, digits, '_', '.' or '-'")
    document = _read(path)
    tables = _keys_table(document)
    if new.name in tables:
        raise KeyNameTakenError(f"the keys file {path} already has a key named '{new.name}'")
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    table = tomlkit.table()
    table["key"] = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    table["role"] = new.role
    fields: dict[str, Any] = {
        "models": list(new.models) if new.models is not None else None,
        "requests_per_minute": new.requests_per_minute,
        "tokens_per_day": new.tokens_per_day,
        "max_concurrent": new.max_concurrent,
        "weight": new.weight,
    }
    for field, value in fields.items():
        if value is not None:
            table[field] = value
    tables[new.name] = table
    _replace(path, tomlkit.dumps(document))
    return key


def revoke_key(path: str, name: str) -> None:
    """Remove the key named ``name`` from the keys file at ``path``.

    Raises:
        UnknownKeyNameError: the file has no key of that name.
        SettingsError: the file cannot be read or written, or would not pass the keys file's checks.
    """
    document = _read(path)
    tables = _keys_table(document)
    if name not in tables:
        raise UnknownKeyNameError(f"the keys file {path} has no key named '{name}'")
    _keep_trailing_comments(tables, name)
    del tables[name]
    _replace(path, tomlkit.dumps(document))


def _read(path: str) -> TOMLDocument:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return tomlkit.document()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the keys file {path}: {exc}") from None
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise SettingsError(f"the keys file {path} is not valid TOML ({exc}): left as it is") from None


def _keys_table(document: TOMLDocument) -> Table:
    if "keys" not in document:
        document["keys"] = tomlkit.table(is_super_table=True)
    tables = document["keys"]
    if not isinstance(tables, Table):
        raise SettingsError(f"{KEYS_FILE_VARIABLE}: keys: must be tables, one [keys.<name>] per key")
    return tables


def _keep_trailing_comments(tables: Table, name: str) -> None:
    """Comments at the end of a table (above the next table's header) are about the next table; they
    stay where they are when the table goes (tomlkit counts them as the removed table's)."""
    removed = tables[name]
    if not isinstance(removed, Table):
        return
    body = removed.value.body
    start = len(body)
    while start and body[start - 1][0] is None and isinstance(body[start - 1][1], Comment | Whitespace):
        start -= 1
    trailing = [item for _, item in body[start:] if isinstance(item, Comment | Whitespace)]
    if not any(isinstance(item, Comment) for item in trailing):
        return
    names = list(tables.keys())
    place = names.index(name)
    after = tables[names[place + 1]] if place + 1 < len(names) else None
    before = tables[names[place - 1]] if place else None
    if isinstance(after, Table):  # written just above the next table's header, where they were
        after.trivia.indent = "".join(item.as_string() for item in trailing) + after.trivia.indent
    elif isinstance(before, Table):  # the last table's closing comments: the file's end still
        for item in trailing:
            before.add(item)


def _replace(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (mode 0600), once it passes the keys file's checks."""
    target = Path(path)
    directory = target.parent
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise SettingsError(f"cannot write beside the keys file {path}: {exc}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        read_keys_file(temporary)  # raises, naming the table and field, before anything is replaced
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself survives a crash once the directory is on disk too.
    with contextlib.suppress(OSError):
        directory_descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_descriptor)
        finally:
            os.close(directory_descriptor)


__all__ = ["KEY_PREFIX", "KeyNameTakenError", "NewKey", "UnknownKeyNameError", "add_key", "revoke_key"]
