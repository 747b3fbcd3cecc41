"""File states a test needs that ordinary permissions cannot give root: an immutable file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

# linux/fs.h: the inode flags `chattr` reads and writes (the kernel copies an int).
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010


def _flags(fd: int) -> int:
    return struct.unpack("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4])[0]


def _set_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<iI", flags, 0))


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`path` immutable (`chattr +i`: not even root may write it) until the block ends.

    Skips the calling test where the filesystem or the process's capabilities refuse the flag.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            flags = _flags(fd)
            _set_flags(fd, flags | FS_IMMUTABLE_FL)
        except OSError as e:
            pytest.skip(f"cannot make {path.name} immutable here ({e.strerror})")
        try:
            yield
        finally:
            _set_flags(fd, flags & ~FS_IMMUTABLE_FL)
    finally:
        os.close(fd)
