"""Ownership of a backing file: one exclusive holder for the daemon's whole life.

Two device models mapping the same pmem would give two guests the same pages (Xen would
refuse the second populate with -EBUSY, but only after a half-built guest). The lock is a
`flock` on the file (per open file description, released by the kernel when the holder
dies); the holder's identity is written to an xattr so a refusal can name it, with
/proc/locks as the fallback (it gives the pid, not the domain).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import LockHeld

HOLDER_XATTR = "user.pmemd.holder"
_NO_XATTR = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


class BackingLock:
    """An exclusive lock on `path`, naming its holder as pid, domain and purpose.

    Use as a context manager, or call `acquire()`/`release()`. Opens the file read-only:
    holding the lock never writes guest data.
    """

    def __init__(self, path: str | Path, *, domid: int | None, purpose: str = "pmemd") -> None:
        self.path = Path(path)
        self.holder = f"pid {os.getpid()}" + (f", domain {domid}" if domid is not None else "") + f" ({purpose})"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockHeld naming the current holder."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already acquired by this object")
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            st = os.fstat(fd)
            os.close(fd)
            raise LockHeld(
                f"{self.path} is already in use by {_holder(self.path, st)}; "
                f"refusing to share a backing file between two holders"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _set_holder(self.path, self.holder)

    def release(self) -> None:
        """Drop the lock (and the holder record); safe to call twice."""
        if self._fd is None:
            return
        try:
            os.removexattr(self.path, HOLDER_XATTR)
        except OSError as e:
            if e.errno not in _NO_XATTR + (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EROFS):
                raise
        finally:
            os.close(self._fd)  # closing the last fd of the description drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> BackingLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _set_holder(path: Path, holder: str) -> None:
    """Best effort: the flock is the lock; a file we may not tag (immutable, read-only
    filesystem, not ours) keeps no record and refusals fall back to /proc/locks."""
    try:
        os.setxattr(path, HOLDER_XATTR, holder.encode())
    except OSError as e:
        if e.errno not in _NO_XATTR + (errno.EPERM, errno.EACCES, errno.EROFS):
            raise


def _holder(path: Path, st: os.stat_result) -> str:
    """Who holds the lock: the xattr record, else the pid /proc/locks shows, else 'another process'."""
    try:
        return os.getxattr(path, HOLDER_XATTR).decode(errors="replace")
    except OSError as e:
        if e.errno not in _NO_XATTR:
            raise
    pid = _flock_pid(st)
    return f"pid {pid}" if pid is not None else "another process"


def _flock_pid(st: os.stat_result) -> int | None:
    """The pid /proc/locks lists for a FLOCK on this inode (lines: `1: FLOCK ADVISORY WRITE pid MJ:MN:INO ...`)."""
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                major, minor, ino = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(ino)) == want:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None
