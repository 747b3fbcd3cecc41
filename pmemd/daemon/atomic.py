"""Durable file replacement, the one way the daemon rewrites a whole file.

A crash leaves the old contents or the new, never half of either; the data is on disk
when the call returns. The directory may be given as an open descriptor, so a daemon that
has since chrooted or dropped root still saves through what it opened at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
    """`pwrite` until every byte of `data` is written at `offset`."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def fsync_directory(path: Path) -> None:
    """Make a directory entry just created or renamed in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_in(dir_fd: int, name: str, data: bytes) -> None:
    """Temporary file, fsync, rename over `name` inside `dir_fd`, fsync the directory."""
    tmp = name + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


def replace_file(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data` (mode 0600 for a new file), durable on return."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_in(dir_fd, path.name, data)
    finally:
        os.close(dir_fd)
