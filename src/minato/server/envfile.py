"""The env file ``minato serve`` reads: ``./.env``, or the one ``--env-file`` names.

The same file docker compose reads, so ``.env.example`` copied to ``.env`` is in force whichever way
Minato runs. The real environment wins over the file. Only names Minato reads are taken from it (its
settings, and Ollama's own ``OLLAMA_HOST`` it falls back to); the others (compose's variables, the
Ollama container's) are not Minato's business and stay out of its environment. The file's values are
put into the process environment before the server starts, because each worker process reads its
settings from the environment it inherits.

A line that is not ``NAME=value`` and a ``MINATO_*`` name that is not a setting stop Minato with the
file and the line, as the environment's own do: a misspelt ``MINATO_API_KEYS`` would otherwise leave
Minato serving without keys.
"""

from __future__ import annotations

import io
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from minato.errors import SettingsError
from minato.settings import meant_for_minato, not_a_setting, setting_variables

DEFAULT_ENV_FILE: Final = Path(".env")
#: Names outside the ``MINATO_`` prefix that Minato reads, and so takes from the file.
OTHER_NAMES_READ: Final = frozenset({"OLLAMA_HOST"})


@dataclass(frozen=True)
class EnvFile:
    """What an env file gave: names only, never values (a ``.env`` holds keys)."""

    path: Path
    applied: tuple[str, ...]
    """Names set from the file."""
    overridden: tuple[str, ...]
    """Names the file sets that the environment already had: the environment's value is in force."""
    ignored: tuple[str, ...]
    """Names that are not Minato's (compose's variables and the like), left out of its environment."""
    lines: dict[str, int]
    """The line each name Minato reads is set on."""

    def origin(self, name: str) -> str:
        """`` (from PATH line N)`` when ``name``'s value in force came from the file, else nothing."""
        if name in self.applied:
            return f" (from {self.path} line {self.lines[name]})"
        return ""


def load_env_file(explicit: Path | None, environ: MutableMapping[str, str]) -> EnvFile | None:
    """Read ``explicit`` (which must exist), else ``./.env`` if there is one, into ``environ``.

    Names ``environ`` already has keep their value. Nothing is written into ``environ`` unless the
    whole file is valid. Raise :class:`SettingsError` naming the file and line.
    """
    path = explicit if explicit is not None else DEFAULT_ENV_FILE
    if explicit is None and not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"cannot read the env file {path}: {reason}") from None
    shown = path.resolve()
    lines = _names_by_line(text, shown)
    # The library's own reading of the same text for the values: its quoting, escapes and ${VAR}.
    values = dotenv_values(stream=io.StringIO(text))
    applied: dict[str, str] = {}
    overridden: list[str] = []
    ignored: list[str] = []
    for name, value in values.items():
        if not (meant_for_minato(name) or name in OTHER_NAMES_READ):
            ignored.append(name)
        elif value is None:  # a bare NAME line: like compose, it sets nothing
            continue
        elif name in environ:
            overridden.append(name)
        else:
            applied[name] = value
    environ.update(applied)
    return EnvFile(shown, tuple(applied), tuple(overridden), tuple(ignored), lines)


def _names_by_line(text: str, path: Path) -> dict[str, int]:
    """Each name's line; refuse a line that is not ``NAME=value`` or a ``MINATO_*`` name that is no setting."""
    known = setting_variables()
    lines: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        # A binding's text starts with the blank lines before it: its line is that of its first character.
        text_of = binding.original.string
        line = binding.original.line + text_of[: len(text_of) - len(text_of.lstrip())].count("\n")
        if binding.error:
            raise SettingsError(f"{path} line {line}: not a NAME=value line")
        name = binding.key
        if name is None:
            continue
        if meant_for_minato(name) and name not in known:
            raise SettingsError(f"{path} line {line}: {not_a_setting(name)}")
        lines[name] = line
    return lines
