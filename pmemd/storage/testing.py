"""Test and benchmark kit: fragmented files, synthetic extent sources, recording sinks.

Shipped with the package (as trio ships trio.testing) so tests, bench/ and the simulator
build the same fixtures the same way.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pmemd.xen.page import PAGE_SIZE

from .fiemap import Extent, ExtentFlag

_STAMP = struct.Struct("<8sQ")


def page_stamp(salt: bytes, index: int) -> bytes:
    """The 4 KiB content of page `index` of a fragmented file: its salt and index, repeated."""
    return _STAMP.pack(salt, index) * (PAGE_SIZE // _STAMP.size)


def make_fragmented(path: str | Path, pages: int, *, salt: bytes | None = None) -> bytes:
    """Write a `pages`-page file in which every page is its own extent, physically out of order.

    Pages are allocated one at a time with fallocate, alternating with pages of a spacer
    file (so no two neighbours are physically adjacent) and in a scrambled logical order
    (so physical order does not follow logical order); then every page is written, which
    turns the unwritten extents into written ones in place. Each page carries
    `page_stamp(salt, index)`; returns the salt.
    """
    salt = salt or os.urandom(8)
    spacer_path = Path(f"{path}.spacer")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    spacer = os.open(spacer_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        step = _coprime_step(pages)
        for n in range(pages):
            os.posix_fallocate(fd, (n * step % pages) * PAGE_SIZE, PAGE_SIZE)
            os.posix_fallocate(spacer, n * PAGE_SIZE, PAGE_SIZE)
        for start in range(0, pages, 256):
            chunk = b"".join(page_stamp(salt, i) for i in range(start, min(start + 256, pages)))
            os.pwrite(fd, chunk, start * PAGE_SIZE)
        os.fsync(fd)
    finally:
        os.close(spacer)
        os.unlink(spacer_path)
        os.close(fd)
    return salt


def _coprime_step(n: int) -> int:
    """A step near n/3 with gcd(step, n) = 1, so n * step % n visits every page once."""
    step = max(1, n // 3) | 1
    while math.gcd(step, n) != 1:
        step += 2
    return step


@dataclass(frozen=True)
class SyntheticExtents:
    """`count` extents of `pages` pages each, logically contiguous, physically scattered.

    Physical placement strides by `stride` pages (> `pages` means no two extents can
    coalesce: the worst case for the pipeline). Holds nothing but its parameters.
    """

    count: int
    pages: int = 1
    stride: int = 2
    physical_base: int = 1 << 30
    name: str = "synthetic"

    @property
    def size(self) -> int:
        return self.count * self.pages * PAGE_SIZE

    def extents(self) -> Iterator[Extent]:
        length = self.pages * PAGE_SIZE
        step = self.stride * PAGE_SIZE
        base = self.physical_base
        last = self.count - 1
        for i in range(self.count):
            yield Extent(i * length, base + i * step, length, ExtentFlag.LAST if i == last else 0)


@dataclass
class RecordingSink:
    """A populate sink that keeps every call, for asserting on small mappings."""

    calls: list[tuple[int, int, int]] = field(default_factory=list)

    async def populate(self, mfn: int, gfn: int, nr: int) -> None:
        self.calls.append((mfn, gfn, nr))


@dataclass
class CountingSink:
    """A populate sink that keeps only totals: constant memory, for benchmarks."""

    calls: int = 0
    frames: int = 0

    async def populate(self, mfn: int, gfn: int, nr: int) -> None:
        self.calls += 1
        self.frames += nr


def fiemap_unsupported(directory: str | Path) -> str | None:
    """Why FIEMAP cannot be used on files in `directory`, or None if it can (for skips)."""
    from .fiemap import fiemap_extents

    probe = Path(directory) / ".fiemap-probe"
    probe.write_bytes(bytes(PAGE_SIZE))
    fd = os.open(probe, os.O_RDONLY)
    try:
        list(fiemap_extents(fd))
    except OSError as e:
        return f"{directory} does not support FIEMAP: {e.strerror}"
    finally:
        os.close(fd)
        probe.unlink()
    return None
