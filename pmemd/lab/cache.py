"""A build cache that concurrent lab runs share (two CI jobs, two users on one machine).

Builders take turns (`locked`: an exclusive `fcntl.flock` on `<cache>/.lock`, released when the
holder exits, even by a crash), and every entry is built under a unique temporary name and
published with one atomic `rename` (`publish`), so no run ever sees, deletes or overwrites
another run's half-built entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = ".lock"
WORK_PREFIX = ".build-"


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[Path]:
    """Hold the cache's builder lock for the block (waits for another holder)."""
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield cache
    finally:
        os.close(fd)  # releases the lock


def publish(cache: Path, name: str, build: Callable[[Path], object]) -> Path:
    """`cache/name`, made by `build(tmp)` — which creates the file or directory `tmp` — under a
    private temporary name, then renamed into place. An existing entry is returned as it is."""
    out = cache / name
    if out.exists():
        return out
    work = Path(tempfile.mkdtemp(dir=cache, prefix=WORK_PREFIX))
    try:
        tmp = work / name
        build(tmp)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def remove_abandoned(cache: Path) -> None:
    """Drop temporary build directories a killed builder left; call with the lock held."""
    for stale in cache.glob(f"{WORK_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
