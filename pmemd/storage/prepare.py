"""`pmemd prepare`: make a backing file mappable — allocated, written, unshared — then verify.

This is the one place pmemd writes into the guest data area, and only as an explicit user
command, and only bytes that already read as zero (holes and unwritten extents) or the
file's own bytes (when unsharing by rewrite). Existing guest data is never changed.

Why writing is needed: on ext4/xfs `fallocate` leaves *unwritten* extents, whose blocks
hold stale disk contents that the filesystem hides by returning zeros. Mapped into a guest
by physical address, those blocks would leak whatever was there before; so the ranges are
written (with FALLOC_FL_WRITE_ZEROES where the kernel offers it, else with zeros).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import NvdimmConfig
from .errors import BackingRefused
from .extents import FileExtents, validated
from .fiemap import ExtentFlag, fiemap_extents
from .layout import Fingerprint, record_layout
from .lock import BackingLock

FALLOC_FL_UNSHARE_RANGE = 0x40
FALLOC_FL_WRITE_ZEROES = 0x80  # Linux 6.17+: allocate *written* zeroed blocks
_CHUNK = 1 << 20  # bytes per pwrite/read-back, bounding the buffer
_PASSES = 3  # conversion passes before giving up (one is normally enough)
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


@dataclass(frozen=True)
class PrepareReport:
    """What `prepare` changed and the layout it left (bytes throughout)."""

    path: Path
    size: int
    created: bool
    previous_size: int
    unshared: int  # bytes of shared (reflinked) extents given private blocks
    zeroed: int  # bytes of holes/unwritten extents written as zeros
    extents: int
    fingerprint: str
    recorded: bool  # whether the fingerprint was stored in the file's xattr


def prepare_backing(nvdimm: NvdimmConfig) -> PrepareReport:
    """`pmemd prepare --config F`, for one vNVDIMM."""
    return prepare(nvdimm.backing, nvdimm.size)


def prepare(path: str | Path, size: int) -> PrepareReport:
    """Create or extend `path` to `size` bytes, fully allocated, written and unshared; verify.

    Refuses a file larger than `size` (shrinking would drop guest data) and a file another
    holder has locked. Returns the verified layout's fingerprint, also recorded in an xattr.
    """
    path = Path(path)
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise BackingRefused(path, None, f"cannot open for preparing: {e.strerror}") from None
    try:
        with BackingLock(path, domid=None, purpose="pmemd prepare"):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BackingRefused(path, None, "is not a regular file")
            if st.st_size > size:
                raise BackingRefused(
                    path, None, f"is {st.st_size:#x} bytes, larger than the configured {size:#x}; refusing to truncate"
                )
            unshared = _unshare(fd, size)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                raise BackingRefused(path, None, f"cannot allocate {size:#x} bytes: {e.strerror}") from None
            zeroed = 0
            for attempt in range(_PASSES):
                zeroed += _write_unwritten(fd, size)
                os.fsync(fd)
                try:
                    fingerprint, extents = _verify(path, size)
                    break
                except BackingRefused:
                    if attempt == _PASSES - 1:
                        raise
            recorded = record_layout(path, fingerprint)
    finally:
        os.close(fd)
    return PrepareReport(path, size, created, st.st_size, unshared, zeroed, extents, fingerprint, recorded)


def _verify(path: Path, size: int) -> tuple[str, int]:
    """The fingerprint and extent count of the file, refusing it if it is not mappable."""
    source = FileExtents(path, size)
    fingerprint = Fingerprint(size)
    for _ in fingerprint.over(validated(source.extents(), source.name, size)):
        pass
    return fingerprint.hexdigest(), fingerprint.extents


def _unshare(fd: int, size: int) -> int:
    """Give every shared extent private blocks: UNSHARE_RANGE, else rewrite its bytes."""
    done = 0
    for logical, _physical, length, flags in fiemap_extents(fd, 0, size):
        if not flags & ExtentFlag.SHARED:
            continue
        end = min(logical + length, size)
        if not _fallocate(fd, FALLOC_FL_UNSHARE_RANGE, logical, end - logical):
            for offset in range(logical, end, _CHUNK):  # copy-on-write does the unsharing
                os.pwrite(fd, os.pread(fd, min(_CHUNK, end - offset), offset), offset)
        done += end - logical
    return done


def _write_unwritten(fd: int, size: int) -> int:
    """Write zeros into every hole and unwritten extent of [0, size); return bytes written."""
    written = expected = 0
    for logical, _physical, length, flags in fiemap_extents(fd, 0, size):
        if logical > expected:
            written += _zero(fd, expected, logical)
        if flags & ExtentFlag.UNWRITTEN:
            written += _zero(fd, logical, min(logical + length, size))
        expected = max(expected, logical + length)
    if expected < size:
        written += _zero(fd, expected, size)
    return written


def _zero(fd: int, start: int, end: int) -> int:
    if end <= start:
        return 0
    if _fallocate(fd, FALLOC_FL_WRITE_ZEROES, start, end - start):
        return end - start
    zeros = bytes(min(_CHUNK, end - start))
    offset = start
    while offset < end:
        offset += os.pwrite(fd, memoryview(zeros)[: min(_CHUNK, end - offset)], offset)
    return end - start


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """fallocate(2) with a mode; False if this kernel/filesystem does not support the mode."""
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))
