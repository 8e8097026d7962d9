"""Who may read the SQLite store: it holds every key's prompts and answers, so it is its user's alone.

The file is created ``0600`` before SQLite opens it, and SQLite gives the ``-wal`` and ``-shm`` it
creates beside it the database file's own mode. A directory Minato has to create for it is created
``0700``. Neither goes through the umask, which is the whole process's. A store that already exists
is the operator's: if others may read or write it, start-up says so (naming the file, its mode and
the fix), and leaves it as it is.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

import structlog

logger = structlog.get_logger("minato.sessions")

FILE_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700
#: What SQLite keeps beside the database in WAL mode.
COMPANIONS: Final = ("-wal", "-shm")
# Bits that let anyone but the file's owner read or write it.
_SHARED: Final = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


def prepare_store_file(path: Path) -> None:
    """Make the store private if it is new; report an existing store (the file, its ``-wal`` and
    ``-shm``) that others may read or write."""
    create_private(path)
    for file in (path, *(path.with_name(path.name + suffix) for suffix in COMPANIONS)):
        _report_if_shared(file)


def create_private(path: Path) -> None:
    """Create the store's missing directories ``0700`` and, if it is missing, the file ``0600`` (empty:
    SQLite makes it a database). An existing file, or a symbolic link to one, is left as it is."""
    _make_directories(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)


def _make_directories(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each ``0700`` (an existing one is left alone)."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
            made.mkdir(mode=DIRECTORY_MODE)


def _report_if_shared(file: Path) -> None:
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except FileNotFoundError:
        return  # no -wal or -shm: the last connection closed cleanly
    if mode & _SHARED:
        logger.warning(
            "session_store_not_private",
            path=str(file),
            mode=f"{mode:04o}",
            fix=f"chmod 600 {file}",
            why="it holds every key's prompts and answers, readable or writable by other local users",
        )
