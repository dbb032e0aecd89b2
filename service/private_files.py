"""Files that hold patient data (outputs, exported NDJSON, the service's SQLite database):
created readable and writable by their owner only (0600, folders 0700), whatever the umask.

A file is created with these permissions and set to them again once open (``fchmod``): the
umask can only take permissions away, and a file left by an earlier run is tightened when it
is written again. Folders created on the way get 0700; a folder that existed keeps its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_folder(path: Path) -> Path:
    """The folder, created 0700 (with any missing parents) unless it exists."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process
        folder.chmod(FOLDER_MODE)
    if not path.is_dir():
        raise NotADirectoryError(str(path))
    return path


def open_private(path: Path, mode: str = "wb") -> IO[bytes]:
    """``path.open(mode)`` for ``wb`` or ``ab``, the file 0600."""
    if mode not in ("wb", "ab"):
        raise ValueError(f"unsupported mode {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
        return os.fdopen(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        raise


def write_private(path: Path, data: bytes) -> None:
    with open_private(path) as handle:
        handle.write(data)


def create_private(path: Path) -> None:
    """Create an empty 0600 file unless one exists (a database about to be opened)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
