"""Layout fingerprints: a running hash over a backing file's validated extent stream.

pmem pages are handed to the guest by physical location, so if the filesystem moved the
file's blocks (defragmentation, reflink, truncate and rewrite) between `prepare` and a
start, or during the mapping, the guest would see someone else's blocks. The fingerprint
is recorded by `prepare` (in an xattr on the backing file) and re-checked at start.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import LayoutMoved
from .extents import ExtentSource, validated
from .fiemap import Extent

LAYOUT_XATTR = "user.pmemd.layout"
_RECORD = struct.Struct("<QQQ")
_VERSION = b"pmemd-layout-v1"


class Fingerprint:
    """A hash stage: pass extents through, folding (logical, physical, length) into a digest."""

    def __init__(self, size: int) -> None:
        self._hash = hashlib.blake2b(_VERSION + _RECORD.pack(size, 0, 0), digest_size=20)
        self.extents = 0  # extents seen so far

    def over(self, extents: Iterable[Extent]) -> Iterator[Extent]:
        update, pack = self._hash.update, _RECORD.pack
        for extent in extents:
            update(pack(extent[0], extent[1], extent[2]))
            self.extents += 1
            yield extent

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def layout_fingerprint(source: ExtentSource, size: int) -> str:
    """Validate the whole extent stream of `source` and return its fingerprint."""
    fingerprint = Fingerprint(size)
    for _ in fingerprint.over(validated(source.extents(), source.name, size)):
        pass
    return fingerprint.hexdigest()


def verify_layout(source: ExtentSource, size: int, expected: str) -> str:
    """Refuse (LayoutMoved) unless the stream still validates to the `expected` fingerprint."""
    actual = layout_fingerprint(source, size)
    if actual != expected:
        raise layout_moved(source.name, expected, actual)
    return actual


def layout_moved(name: str, expected: str, actual: str) -> LayoutMoved:
    """The refusal for a layout that no longer matches its fingerprint."""
    return LayoutMoved(
        f"{name}: extent layout changed since it was recorded "
        f"(fingerprint {expected[:12]}…, now {actual[:12]}…): its blocks moved "
        f"(defragmentation, reflink or rewrite?); check the file, then run `pmemd prepare` again"
    )


def record_layout(path: str | Path, fingerprint: str) -> bool:
    """Store the fingerprint with the file; False if the filesystem has no user xattrs."""
    try:
        os.setxattr(path, LAYOUT_XATTR, fingerprint.encode())
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True


def recorded_layout(path: str | Path) -> str | None:
    """The fingerprint `record_layout` stored, or None if there is none."""
    try:
        return os.getxattr(path, LAYOUT_XATTR).decode()
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
