"""Mirrored guest PMEM: guest frames that hold a copy of the backing file, written back on flush.

Upstream Xen cannot map host pmem frames into a guest (no XENMEM_populate_pmem_map), so the
daemon populates ordinary guest frames at the NVDIMM's range, fills them from the file, and
writes changed blocks back. A block's BLAKE2 digest (16 bytes per 64 KiB) is what was last
made durable, so a write-back reads guest memory once, writes only blocks whose digest
changed, and never holds more than one block: no second copy of the DIMM.

Durability: `write_back()` returns after `fdatasync`, so data the guest wrote before its
flush-hint write is in the file when the flush completes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

BLOCK = 64 << 10
DIGEST = 16


@dataclass
class MirrorStatistics:
    fills: int = 0
    write_backs: int = 0  # write-backs that found changed blocks
    flushes: int = 0  # write-back requests (flush hints, interval, shutdown)
    bytes_written: int = 0


class Mirror:
    """One NVDIMM's guest PMEM (`view`, the mapped guest frames) and its backing file."""

    def __init__(self, path: Path, view: memoryview) -> None:
        self.path = path
        self.view = view
        self.size = len(view)
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        if os.fstat(self.fd).st_size < self.size:
            os.close(self.fd)
            raise OSError(f"{path} is smaller than the guest PMEM ({self.size} bytes)")
        self.digests: list[bytes] = []
        self.stats = MirrorStatistics()

    def _blocks(self) -> range:
        return range(0, self.size, BLOCK)

    def fill(self) -> None:
        """Copy the file into guest memory (the guest has not run yet), block by block."""
        self.digests = []
        for off in self._blocks():
            chunk = os.pread(self.fd, min(BLOCK, self.size - off), off)
            self.view[off : off + len(chunk)] = chunk
            self.digests.append(hashlib.blake2b(chunk, digest_size=DIGEST).digest())
        self.stats.fills += 1

    def adopt(self) -> None:
        """Take over frames a previous daemon filled: guest memory is newer than the file, so
        the digests come from the file and the next write-back writes every difference."""
        self.digests = [hashlib.blake2b(os.pread(self.fd, min(BLOCK, self.size - off), off),
                                        digest_size=DIGEST).digest() for off in self._blocks()]

    def write_back(self) -> int:
        """Write every changed block and fdatasync; returns the bytes written."""
        self.stats.flushes += 1
        written = 0
        for index, off in enumerate(self._blocks()):
            chunk = bytes(self.view[off : min(off + BLOCK, self.size)])  # one private block
            digest = hashlib.blake2b(chunk, digest_size=DIGEST).digest()
            if digest != self.digests[index]:
                os.pwrite(self.fd, chunk, off)
                self.digests[index] = digest
                written += len(chunk)
        if written:
            os.fdatasync(self.fd)
            self.stats.write_backs += 1
            self.stats.bytes_written += written
        return written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
