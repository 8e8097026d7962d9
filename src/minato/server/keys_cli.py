"""``minato keys add|list|revoke``: manage the keys file (``MINATO_KEYS_FILE``) while Minato runs.

A running Minato reads the file again within seconds of a change (or at once on ``SIGHUP``), so a key
added here works, and a key revoked here gets 401, without a restart (see docs/security.md).
Exit status: 0 done; 1 no key of that name to revoke; 2 a refusal (a name taken or not a key name, no
keys file, a file that does not parse: nothing is written then).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Final

#: Columns of ``minato keys list`` (``--json`` gives the same as ``GET /keys``).
COLUMNS: Final = ("NAME", "ROLE", "MODELS", "REQUESTS/MIN", "TOKENS/DAY", "CONCURRENT", "WEIGHT")
EXIT_UNKNOWN: Final = 1
EXIT_REFUSED: Final = 2


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _weight(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be 1 to 1000")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its commands to the command line's parser."""
    keys = commands.add_parser("keys", help="add, list or revoke keys in the keys file (no restart needed)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", metavar="PATH", help="the keys file (default: MINATO_KEYS_FILE)")
    common.add_argument(
        "--env-file", type=Path, metavar="PATH", help="read MINATO_KEYS_FILE from this file (default: ./.env)"
    )
    add = actions.add_parser("add", parents=[common], help="create a key; print it once (only it, on stdout)")
    add.add_argument("name", help="1 to 64 letters, digits, '_', '.' or '-'")
    add.add_argument("--role", choices=("user", "admin"), default="user")
    add.add_argument("--models", nargs="+", metavar="GLOB", help="model name patterns it may use (default: all)")
    add.add_argument("--requests-per-minute", type=_count, metavar="N", help="0: unlimited")
    add.add_argument("--tokens-per-day", type=_count, metavar="N", help="0: unlimited")
    add.add_argument("--max-concurrent", type=_count, metavar="N", help="0: no bound")
    add.add_argument("--weight", type=_weight, metavar="N", help="1 to 1000 (default 1)")
    listing = actions.add_parser("list", parents=[common], help="names, roles, scopes and limits (never keys)")
    listing.add_argument("--json", action="store_true", help="as JSON (the same as GET /keys)")
    revoke = actions.add_parser("revoke", parents=[common], help="remove a key")
    revoke.add_argument("name")


def run(args: argparse.Namespace) -> int:
    """Do one ``minato keys`` command; return the exit status."""
    from minato.auth.keys import KEYS_FILE_VARIABLE
    from minato.auth.keys_edit import KeyNameTakenError, UnknownKeyNameError
    from minato.errors import SettingsError
    from minato.server.envfile import load_env_file

    try:
        if args.file is None:
            load_env_file(args.env_file, os.environ)
        path = args.file or os.environ.get(KEYS_FILE_VARIABLE, "")
        if not path:
            raise SettingsError(f"no keys file: set {KEYS_FILE_VARIABLE} (or pass --file PATH)")
        return _do(args, path)
    except UnknownKeyNameError as exc:
        print(f"minato: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    except (KeyNameTakenError, SettingsError) as exc:
        print(f"minato: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _do(args: argparse.Namespace, path: str) -> int:
    from minato.auth.keys_edit import NewKey, add_key, revoke_key

    if args.keys_command == "add":
        new = NewKey(
            name=args.name,
            role=args.role,
            models=None if args.models is None else tuple(args.models),
            requests_per_minute=args.requests_per_minute,
            tokens_per_day=args.tokens_per_day,
            max_concurrent=args.max_concurrent,
            weight=args.weight,
        )
        key = add_key(path, new)
        print(key)  # the only time anyone sees it: stdout holds nothing else, for scripts
        print(f"minato: added key '{args.name}' to {path}; it works within seconds", file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        revoke_key(path, args.name)
        print(f"minato: revoked key '{args.name}' in {path}; it gets 401 within seconds", file=sys.stderr)
        return 0
    return _list(path, as_json=args.json)


def _list(path: str, *, as_json: bool) -> int:
    import msgspec

    from minato.auth.keys import KeyInfo, read_keys_file

    keys = [] if not Path(path).exists() else [KeyInfo.of(key) for key in read_keys_file(path)]
    if as_json:
        sys.stdout.write(msgspec.json.encode(keys).decode() + "\n")
        return 0
    rows = [COLUMNS] + [
        (
            key.name,
            key.role,
            "*" if key.models is None else ",".join(key.models),
            _limit(key.requests_per_minute),
            _limit(key.tokens_per_day),
            _limit(key.max_concurrent),
            str(key.weight),
        )
        for key in keys
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _limit(value: int | None) -> str:
    """``default`` (the deployment's setting applies), ``-`` (none), or the number."""
    if value is None:
        return "default"
    return str(value) if value else "-"


__all__ = ["add_commands", "run"]
