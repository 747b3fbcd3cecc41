"""Extent streams of a backing file, and the rules an extent must meet to back guest PMEM.

A source yields raw extents in logical order; `validated` is the stage every stream passes
through before anything is mapped. Both are generators, so a file with a million extents
costs the same memory as a file with one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pmemd.xen.page import PAGE_SIZE

from .errors import BackingRefused
from .fiemap import DEFAULT_BATCH, Extent, ExtentFlag, fiemap_extents

PAGE_MASK = PAGE_SIZE - 1

# The only flags a mappable extent may carry: LAST marks the end of the map and MERGED
# says the filesystem reported several contiguous blocks as one. Every other bit (known or
# not yet invented) means the bytes are not plainly at fe_physical, so it is refused.
ALLOWED_FLAGS = ExtentFlag.LAST | ExtentFlag.MERGED
# Plain ints: IntFlag arithmetic is slow, and `~` on an IntFlag drops bits it has no name for.
_REFUSED_MASK = ~int(ALLOWED_FLAGS) & 0xFFFFFFFF

_FLAG_REASONS = {
    ExtentFlag.UNWRITTEN: "is unwritten (allocated but never written; run `pmemd prepare`)",
    ExtentFlag.DELALLOC: "is delayed-allocation (no physical location yet)",
    ExtentFlag.UNKNOWN: "has an unknown physical location",
    ExtentFlag.ENCODED: "is encoded (compressed or otherwise transformed on disk)",
    ExtentFlag.DATA_ENCRYPTED: "is encrypted on disk",
    ExtentFlag.NOT_ALIGNED: "is not block aligned",
    ExtentFlag.DATA_INLINE: "is stored inline in metadata",
    ExtentFlag.DATA_TAIL: "is tail-packed with other files' data",
    ExtentFlag.SHARED: "is shared with another file (reflink; run `pmemd prepare` to unshare)",
}
_EXPLAINED = sum(int(flag) for flag in _FLAG_REASONS)


class ExtentSource(Protocol):
    """Where extents come from: a file's FIEMAP, or a synthetic stream for benchmarks.

    `extents()` yields raw extents in ascending logical order (as FIEMAP does); it may
    hold a bounded batch, never the whole map. `name` is used in refusal messages.
    """

    @property
    def name(self) -> str: ...

    def extents(self) -> Iterator[Extent]: ...


@dataclass(frozen=True)
class FileExtents:
    """The extents of a backing file of a given size, read through FIEMAP with SYNC."""

    path: Path
    size: int
    batch: int = DEFAULT_BATCH

    @property
    def name(self) -> str:
        return str(self.path)

    def extents(self) -> Iterator[Extent]:
        """Yield the file's extents over [0, size); refuse a non-file or a size mismatch."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise BackingRefused(self.path, None, f"cannot open: {e.strerror}") from None
        try:
            check_size(self.path, os.fstat(fd), self.size)
            yield from fiemap_extents(fd, 0, self.size, batch=self.batch)
        except OSError as e:
            raise BackingRefused(self.path, None, f"FIEMAP failed: {e.strerror}") from None
        finally:
            os.close(fd)


def check_size(path: str | Path, st: os.stat_result, size: int) -> None:
    """Refuse anything but a regular file of exactly the configured size."""
    if not stat.S_ISREG(st.st_mode):
        raise BackingRefused(path, None, "is not a regular file")
    if st.st_size != size:
        raise BackingRefused(
            path, None, f"size is {st.st_size:#x} bytes but the configuration says {size:#x}"
        )


def describe_flags(flags: int) -> str:
    """Why an extent's flags make it unmappable, naming every offending bit."""
    bad = int(flags) & _REFUSED_MASK
    reasons = [text for flag, text in _FLAG_REASONS.items() if bad & flag]
    unknown = bad & ~_EXPLAINED
    if unknown:
        reasons.append(f"has flags {unknown:#x} that pmemd does not know")
    return "; ".join(reasons)


def validated(extents: Iterable[Extent], name: str, size: int) -> Iterator[Extent]:
    """Pass through extents covering [0, size) exactly once; refuse anything else.

    Refused: any flag outside ALLOWED_FLAGS, any logical/physical/length not 4 KiB
    aligned, a gap in logical coverage (a hole, including a short tail) and an overlap.
    Extents starting at or beyond `size` (preallocation past EOF) are dropped.
    """
    expected = 0
    refused = _REFUSED_MASK
    for extent in extents:
        logical, physical, length, flags = extent
        if logical >= size:
            break
        if flags & refused:
            raise BackingRefused(name, logical, f"extent of {length:#x} bytes {describe_flags(flags)}")
        if (logical | physical | length) & PAGE_MASK:
            raise BackingRefused(name, logical, _misalignment(extent))
        if logical != expected:
            if logical > expected:
                raise BackingRefused(
                    name, expected, f"hole of {logical - expected:#x} bytes (file is sparse; run `pmemd prepare`)"
                )
            raise BackingRefused(name, logical, f"extent overlaps the previous one, which ends at {expected:#x}")
        expected = logical + length
        yield extent
    if expected < size:
        raise BackingRefused(
            name, expected, f"hole of {size - expected:#x} bytes up to the end of the file (run `pmemd prepare`)"
        )


def _misalignment(extent: Extent) -> str:
    parts = [
        f"{field} {value:#x}"
        for field, value in (("logical offset", extent.logical), ("physical offset", extent.physical), ("length", extent.length))
        if value & PAGE_MASK
    ]
    return f"extent is not 4 KiB aligned: {', '.join(parts)}"
