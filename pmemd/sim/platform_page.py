"""The simulator's platform page: GPE status and vMCE poison, shared by a device model and the simulator.

A real device model raises a guest's SCI and injects machine checks with hypercalls that
return before it completes the ioreq, so the guest's next instruction already sees them.
The simulator keeps that ordering with shared memory instead of socket requests: the device
model writes this page (a memfd the simulator hands out, op `platform_map`) synchronously
while it serves an access, and the simulator reads it on the guest's next access. A request
over the socket would race the ioreq completion.

    offset  field
    0       magic        b"PLAT"
    4       version      u32 (1)
    8       gpe_status   u8[GPE_COUNT]: 1 = the GPE is pending (set by the device model,
                         cleared by the guest's OSPM before it runs the _Exx method)
    136     poison_seq   u32: odd while the device model rewrites the table (a seqlock)
    140     poison_count u32
    144     ranges       (u64 start, u64 end)[poison_count], sorted, disjoint, end exclusive

Clearing a GPE before running its method makes the single-writer-per-byte protocol safe:
a device model that sets the byte again while the guest clears it queued its event before
setting it, so the method the guest is about to run drains that event too.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence

from construct import Bytes, Const, Int32ul, Struct

MAGIC = b"PLAT"
VERSION = 1
GPE_COUNT = 128
MAX_POISON_RANGES = 1 << 18
"""The daemon's poison bound (`pmemd.dsm.poison.DEFAULT_MAX_RANGES`): the table holds every range."""

PlatformHeader = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ul,
    "gpe_status" / Bytes(GPE_COUNT),
    "poison_seq" / Int32ul,
    "poison_count" / Int32ul,
)
HEADER_SIZE = PlatformHeader.sizeof()  # 144
GPE_OFFSET = 8
SEQ_OFFSET = GPE_OFFSET + GPE_COUNT
COUNT_OFFSET = SEQ_OFFSET + 4
RANGES_OFFSET = HEADER_SIZE
RANGE = struct.Struct("<QQ")
PAGE_BYTES = RANGES_OFFSET + MAX_POISON_RANGES * RANGE.size
"""Size of the shared mapping (~4 MiB, sparse until the table grows)."""

_U32 = struct.Struct("<I")
MAX_READ_RETRIES = 1000


class PlatformPageError(ValueError):
    """A GPE number or poison table the page cannot hold."""


def initialise(buf: memoryview | bytearray) -> None:
    """Write an empty page (no GPE pending, no poison) into a fresh mapping."""
    buf[:HEADER_SIZE] = PlatformHeader.build(
        {"version": VERSION, "gpe_status": bytes(GPE_COUNT), "poison_seq": 0, "poison_count": 0}
    )


def _check_gpe(gpe: int) -> None:
    if not 0 <= gpe < GPE_COUNT:
        raise PlatformPageError(f"GPE {gpe} is outside 0..{GPE_COUNT - 1}")


class PlatformWriter:
    """The device model's side: raise GPEs and publish the poisoned ranges. Never blocks."""

    def __init__(self, buf: memoryview) -> None:
        if len(buf) < PAGE_BYTES or bytes(buf[:4]) != MAGIC:
            raise PlatformPageError("not a platform page")
        self.buf = buf

    def raise_gpe(self, gpe: int) -> None:
        _check_gpe(gpe)
        self.buf[GPE_OFFSET + gpe] = 1

    def set_poison(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Replace the table with `ranges` as (start, length), ascending and disjoint."""
        if len(ranges) > MAX_POISON_RANGES:
            raise PlatformPageError(f"{len(ranges)} poisoned ranges exceed the table's {MAX_POISON_RANGES}")
        flat = [x for start, length in ranges for x in (start, start + length)]
        (seq,) = _U32.unpack_from(self.buf, SEQ_OFFSET)
        writing = seq if seq & 1 else seq + 1
        _U32.pack_into(self.buf, SEQ_OFFSET, writing)  # odd: being rewritten
        struct.pack_into(f"<{len(flat)}Q", self.buf, RANGES_OFFSET, *flat)
        _U32.pack_into(self.buf, COUNT_OFFSET, len(ranges))
        _U32.pack_into(self.buf, SEQ_OFFSET, (writing + 1) & 0xFFFFFFFF)  # even: consistent again


class PlatformReader:
    """The simulator's side: take pending GPEs, look up poison under the seqlock."""

    def __init__(self, buf: memoryview | bytearray) -> None:
        self.buf = buf

    def take_gpes(self) -> list[int]:
        """The pending GPEs, cleared (as OSPM clears GPE status before dispatching)."""
        status = bytes(self.buf[GPE_OFFSET : GPE_OFFSET + GPE_COUNT])
        pending = [gpe for gpe, byte in enumerate(status) if byte]
        for gpe in pending:
            self.buf[GPE_OFFSET + gpe] = 0
        return pending

    def poisoned(self, start: int, length: int) -> tuple[int, int] | None:
        """The first poisoned (start, length) meeting [start, start + length), or None."""
        for _ in range(MAX_READ_RETRIES):
            (seq,) = _U32.unpack_from(self.buf, SEQ_OFFSET)
            if seq & 1:
                continue
            hit = self._lookup(start, start + length)
            (again,) = _U32.unpack_from(self.buf, SEQ_OFFSET)
            if again == seq:
                return hit
        raise PlatformPageError("the poison table kept changing under the reader")

    def ranges(self) -> list[tuple[int, int]]:
        """Every poisoned (start, length) (for tests and inspection)."""
        (count,) = _U32.unpack_from(self.buf, COUNT_OFFSET)
        count = min(count, MAX_POISON_RANGES)
        flat = struct.unpack_from(f"<{2 * count}Q", self.buf, RANGES_OFFSET)
        return [(flat[i], flat[i + 1] - flat[i]) for i in range(0, len(flat), 2)]

    def _lookup(self, start: int, end: int) -> tuple[int, int] | None:
        (count,) = _U32.unpack_from(self.buf, COUNT_OFFSET)
        count = min(count, MAX_POISON_RANGES)
        starts = _Starts(self.buf, count)
        i = bisect_right(starts, start) - 1  # last range starting at or before `start`
        for j in (i, i + 1):
            if 0 <= j < count:
                s, e = RANGE.unpack_from(self.buf, RANGES_OFFSET + j * RANGE.size)
                if s < end and start < e:
                    return s, e - s
        return None


class _Starts(Sequence[int]):
    """The table's start addresses as a sequence, for bisect, without copying the table."""

    def __init__(self, buf: memoryview | bytearray, count: int) -> None:
        self.buf, self.length = buf, count

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> int:  # type: ignore[override]  # bisect needs only int indices
        value: int = struct.unpack_from("<Q", self.buf, RANGES_OFFSET + i * RANGE.size)[0]
        return value


def coalesced(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) pairs sorted and merged, as the table requires."""
    out: list[list[int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], start + length)
        else:
            out.append([start, start + length])
    return [(s, e - s) for s, e in out]
