"""The docs written from the code: ``python -m tools.docs`` rewrites them, ``--check`` only says which are stale.

``docs/settings.md``'s table and ``.env.example``'s variables are generated from the ``Settings`` Struct
(``src/minato/settings.py``): each variable's name, type, allowed values and default from the field,
its meaning from the field's docstring. The files hold the generating call between cog markers
(``[[[cog ... ]]]`` and ``[[[end]]]``), and everything around them is written by hand. The docs test
(``tests/unit/test_docs_in_sync.py``) fails when a file differs from what this writes.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import re
import sys
import textwrap
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
from cogapp import Cog  # type: ignore[import-untyped]

from minato import settings as settings_module
from minato.settings import PREFIX, Settings

ROOT: Final = Path(__file__).resolve().parents[1]
#: The files with generated parts, relative to the repository.
GENERATED: Final = ("docs/settings.md", ".env.example")
#: How a contributor regenerates them; the docs test's failure message names it.
COMMAND: Final = "make docs"


def field_docs() -> dict[str, str]:
    """Each ``Settings`` field's docstring (the string right under it), as one line of text."""
    tree = ast.parse(inspect.getsource(settings_module))
    body = next(node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == Settings.__name__)
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    missing = [name for name in Settings.__struct_fields__ if name not in docs]
    if missing:
        raise ValueError(f"Settings fields without a docstring (the docs are written from it): {missing}")
    return docs


def _fields() -> list[msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(Settings)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"Settings is no Struct: {info!r}")
    return list(info.fields)


def _default(field: msgspec.inspect.Field) -> Any:
    return field.default_factory() if field.default is msgspec.NODEFAULT else field.default


def _number(value: float) -> str:
    """``15.0`` as ``15``: the environment takes either."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _env_value(value: Any) -> str:
    """A default as written after ``=`` in an env file (what ``Settings.from_env`` reads back as it)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def _shown_default(value: Any) -> str:
    if value is None:
        return "unset"
    text = _env_value(value)
    return f"`{text}`" if text else "empty"


def _one_of(values: Sequence[str]) -> str:
    quoted = [f"`{value}`" for value in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _bounds(kind: msgspec.inspect.IntType | msgspec.inspect.FloatType) -> str:
    integer = isinstance(kind, msgspec.inspect.IntType)
    low = kind.ge if kind.gt is None or not integer else kind.gt + 1
    high = kind.le if kind.lt is None or not integer else kind.lt - 1
    if low is not None and high is not None:
        return f" {_number(low)} to {_number(high)}"
    if kind.gt is not None and not integer:
        return f" > {_number(kind.gt)}"
    if low is not None:
        return f" ≥ {_number(low)}"
    return ""


def _declared_order(values: Sequence[object]) -> list[str]:
    """A ``Literal``'s values in the order the field declares them (msgspec sorts them)."""
    hints = typing.get_type_hints(Settings)
    for hint in hints.values():
        if typing.get_origin(hint) is typing.Literal and set(typing.get_args(hint)) == set(values):
            return [str(value) for value in typing.get_args(hint)]
    return [str(value) for value in values]


#: How a variable of each plain type is written in the environment (``Settings.from_env`` reads it so).
_PLAIN_TYPES: Final[dict[type[msgspec.inspect.Type], str]] = {
    msgspec.inspect.BoolType: _one_of(["true", "false"]),
    msgspec.inspect.StrType: "text",
    msgspec.inspect.VarTupleType: "comma-separated list",
    msgspec.inspect.DictType: "JSON object",
}


def _values(kind: msgspec.inspect.Type) -> str:
    """What a variable may hold, read from its field's type and constraints."""
    if type(kind) in _PLAIN_TYPES:
        return _PLAIN_TYPES[type(kind)]
    if isinstance(kind, msgspec.inspect.LiteralType):
        return _one_of(_declared_order(kind.values))
    if isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        return ("integer" if isinstance(kind, msgspec.inspect.IntType) else "number") + _bounds(kind)
    if isinstance(kind, msgspec.inspect.UnionType):
        return " or ".join(_values(t) for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
    raise ValueError(f"no words yet for a setting of type {kind!r}: add them to tools/docs.py")


def _markdown(doc: str) -> str:
    """A docstring's reStructuredText literals as Markdown's, fit for a table cell."""
    return re.sub(r"``(.+?)``", r"`\1`", doc).replace("|", r"\|")


def _plain(doc: str) -> str:
    """A docstring as plain text for a file at the repository's root: a link as the page it leads to."""
    return re.sub(r"\[.+?\]\(([^)#]*)[^)]*\)", r"docs/\1", doc).replace("``", "")


def settings_table() -> str:
    """``docs/settings.md``'s table: one row per setting, in the Struct's order."""
    docs = field_docs()
    rows = ["| Variable | Default | Values | Meaning |", "| --- | --- | --- | --- |"]
    for field in _fields():
        variable = f"{PREFIX}{field.name.upper()}"
        cells = (f"`{variable}`", _shown_default(_default(field)), _values(field.type), _markdown(docs[field.name]))
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


def env_example() -> str:
    """``.env.example``'s variables: each one's meaning as a comment, then the variable with its default."""
    docs = field_docs()
    blocks = []
    for field in _fields():
        comment = textwrap.wrap(_plain(docs[field.name]), width=98, break_long_words=False, break_on_hyphens=False)
        lines = [f"# {line}" for line in comment]
        lines.append(f"# {PREFIX}{field.name.upper()}={_env_value(_default(field))}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def generated(path: Path) -> str:
    """``path``'s text with its generated parts written anew."""
    return str(Cog().process_string(path.read_text(), fname=str(path)))


def stale() -> list[str]:
    """The generated files whose committed text is not what the code generates now."""
    return [name for name in GENERATED if generated(ROOT / name) != (ROOT / name).read_text()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.docs", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    check = parser.parse_args(argv).check
    outdated = stale()
    for name in outdated:
        if check:
            print(f"{name} is stale: run `{COMMAND}`", file=sys.stderr)
        else:
            (ROOT / name).write_text(generated(ROOT / name))
            print(f"wrote {name}")
    return 1 if check and outdated else 0


if __name__ == "__main__":
    sys.exit(main())
