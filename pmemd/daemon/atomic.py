"""Durable file replacement, the one way the daemon rewrites a whole file.

A crash leaves the old contents or the new, never half of either; the data is on disk
when the call returns. The directory may be given as an open descriptor, so a daemon that
has since chrooted or dropped root still saves through what it opened at start-up
(`HeldFile`: the state file, the security files).
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


class HeldFile:
    """A small file the daemon rewrites whole for its life, through descriptors opened once.

    Opened while the daemon may still open it (before `--depriv`); it never names a path
    again. `replace` is atomic (`replace_in`) where the daemon may still create files in
    the directory, else in place through the file's own descriptor (blob, length, fsync).
    Resources: two descriptors, closed by `close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
        except BaseException:
            os.close(self.dir_fd)
            raise

    def read(self) -> bytes:
        """The file's contents (empty when it was just created)."""
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0) if size else b""

    def write(self, blob: bytes) -> None:
        """Make `blob` the file's contents, durable on return."""
        try:
            replace_in(self.dir_fd, self.path.name, blob)
        except PermissionError:  # an unprivileged uid in a directory it cannot write
            self._overwrite(blob)
            return
        fresh = os.open(self.path.name, os.O_RDWR | os.O_CLOEXEC, dir_fd=self.dir_fd)  # the new inode
        os.close(self.fd)
        self.fd = fresh

    def _overwrite(self, blob: bytes) -> None:
        write_all(self.fd, blob, 0)
        os.ftruncate(self.fd, len(blob))
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)
