"""The FS_IOC_FIEMAP ABI (include/uapi/linux/fiemap.h) and a bounded, streaming reader.

The layouts are declared once, as construct Structs with the kernel's field names. The
extent array is the hot path (tens of thousands of records per file), so its rows are
unpacked with a `struct.Struct` *derived* from the construct declaration rather than
parsed by construct (~17 µs per record, vs ~0.05 µs); a test pins the two together.
"""

from __future__ import annotations

import enum
import fcntl
import struct
from collections.abc import Iterator
from typing import NamedTuple

from construct import FormatField, Int32un, Int64un, Padded, Padding, Renamed, Struct

# _IOWR('f', 11, struct fiemap): dir 3 << 30 | size 32 << 16 | type 'f' << 8 | nr 11.
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_MAX_OFFSET = (1 << 64) - 1
# Extents fetched per ioctl: bounds the buffer (32 + 512 * 56 bytes), whatever the file.
DEFAULT_BATCH = 512

FIEMAP_FLAG_SYNC = 0x0001  # flush dirty pages first, so delalloc becomes real extents


class ExtentFlag(enum.IntFlag):
    """fe_flags bits (fiemap.h). Kept as an IntFlag view; raw values stay plain ints."""

    LAST = 0x0001
    UNKNOWN = 0x0002
    DELALLOC = 0x0004
    ENCODED = 0x0008
    DATA_ENCRYPTED = 0x0080
    NOT_ALIGNED = 0x0100
    DATA_INLINE = 0x0200
    DATA_TAIL = 0x0400
    UNWRITTEN = 0x0800
    MERGED = 0x1000
    SHARED = 0x2000


fiemap_header = Struct(
    "fm_start" / Int64un,  # logical offset (inclusive) at which to start mapping
    "fm_length" / Int64un,  # logical length of the mapping requested
    "fm_flags" / Int32un,
    "fm_mapped_extents" / Int32un,  # out: extents copied into fm_extents
    "fm_extent_count" / Int32un,  # in: room in fm_extents
    "fm_reserved" / Int32un,
)

fiemap_extent = Struct(
    "fe_logical" / Int64un,  # byte offset in the file
    "fe_physical" / Int64un,  # byte offset on the filesystem's block device
    "fe_length" / Int64un,
    "fe_reserved64" / Padding(16),
    "fe_flags" / Int32un,
    "fe_reserved" / Padding(12),
)


def row_format(layout: Struct) -> struct.Struct:
    """A `struct.Struct` equivalent to a flat construct Struct of ints and padding."""
    codes = []
    for sub in layout.subcons:
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if isinstance(inner, FormatField):
            codes.append(inner.fmtstr[1:])
        elif isinstance(inner, Padded):
            codes.append(f"{inner.sizeof()}x")
        else:
            raise TypeError(f"field {sub.name!r} is not a flat integer or padding field")
    return struct.Struct("=" + "".join(codes))


_HEADER = row_format(fiemap_header)
_EXTENT = row_format(fiemap_extent)


class Extent(NamedTuple):
    """One mapped range of a file: bytes [logical, logical+length) live at `physical`."""

    logical: int
    physical: int
    length: int
    flags: int


def fiemap_extents(
    fd: int,
    start: int = 0,
    length: int = FIEMAP_MAX_OFFSET,
    *,
    batch: int = DEFAULT_BATCH,
    sync: bool = True,
) -> Iterator[Extent]:
    """Yield the extents of `fd` overlapping [start, start+length), in logical order.

    At most `batch` extents are held at a time; each ioctl resumes at the end of the last
    extent seen, so the stream stays correct if extents merge while it runs (`prepare`
    converts extents as it reads them). Holes are simply absent from the stream.
    """
    buf = bytearray(_HEADER.size + _EXTENT.size * batch)
    end = min(start + length, FIEMAP_MAX_OFFSET)
    pos = start
    flags = FIEMAP_FLAG_SYNC if sync else 0
    while pos < end:
        _HEADER.pack_into(buf, 0, pos, end - pos, flags, 0, batch, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _HEADER.unpack_from(buf, 0)[3]
        if not mapped:
            return
        last = Extent(pos, 0, 0, 0)
        rows = memoryview(buf)[_HEADER.size : _HEADER.size + _EXTENT.size * mapped]
        for logical, physical, ext_length, ext_flags in _EXTENT.iter_unpack(rows):
            last = Extent(logical, physical, ext_length, ext_flags)
            if logical + ext_length > pos:
                yield last
        rows.release()
        if last.flags & ExtentFlag.LAST or last.logical + last.length <= pos:
            return
        pos = last.logical + last.length
