"""The daemon's pidfile: created 0600 early, lockf-locked for the whole process life.

A toolstack trusts a pid only while the lock on its pidfile is held (varstored and
xenopsd's rule, reference `standalone-device-models.md` §1): if it can take the lock
itself, the daemon is dead whatever the file says. So the file is opened before any
other setup, locked without waiting (a second daemon for the same pidfile fails at
once), and kept open — and therefore locked — until the process ends. On a clean exit
the file is removed while the lock is still held, so no reader sees a stale pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class PidfileError(OSError):
    """The pidfile cannot be created or is locked by a live daemon."""


class Pidfile:
    """An open, locked pidfile holding this process's pid."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # The directory stays open so the file can be unlinked after a chroot.
            self.dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise PidfileError(e.errno, f"cannot create pidfile {self.path}: {e.strerror}") from None
        try:
            self.fd = os.open(self.path.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600,
                              dir_fd=self.dir_fd)
        except OSError as e:
            os.close(self.dir_fd)
            raise PidfileError(e.errno, f"cannot create pidfile {self.path}: {e.strerror}") from None
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            os.close(self.dir_fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise PidfileError(e.errno, f"pidfile {self.path} is locked: {holder(self.path)} is running") from None
            raise PidfileError(e.errno, f"cannot lock pidfile {self.path}: {e.strerror}") from None
        os.fchmod(self.fd, 0o600)  # an existing file keeps its mode through O_CREAT
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def remove(self) -> bool:
        """Unlink the file, then close it (dropping the lock); False if it could not be unlinked.

        A deprivileged daemon may lack write access to the pidfile's directory: the file
        then stays (unlocked, so known stale) for the toolstack to remove, as varstored's
        ExecStopPost does. Idempotent.
        """
        if self.fd < 0:
            return True
        removed = True
        try:
            os.unlink(self.path.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError:
            removed = False
        os.close(self.fd)
        os.close(self.dir_fd)
        self.fd = -1
        return removed


def holder(path: str | os.PathLike[str]) -> str:
    """What the pidfile names, for messages ("pid 123" or "another process")."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


def is_locked(path: str | os.PathLike[str]) -> bool:
    """True while some process holds the pidfile's lock (the toolstack's liveness test)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def pidfile(path: str | os.PathLike[str] | None) -> Iterator[Pidfile | None]:
    """Hold the pidfile at `path` (if any) for the block; remove it on the way out."""
    if path is None:
        yield None
        return
    held = Pidfile(path)
    try:
        yield held
    finally:
        held.remove()
