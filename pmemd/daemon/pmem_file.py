"""`FilePmemStore`: a DIMM's PMEM (the backing file's first `pmem_size` bytes) as security erases see it.

Zeros are written with `pwrite`, never by punching holes or converting extents to
unwritten: the guest's frames are the file's blocks (`map-pmem` maps its FIEMAP extents),
so the extents must stay allocated and written for the mapping to keep holding the bytes
the guest sees. `flush` is `fdatasync`. Opened before `--depriv`, like the label stores.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import structlog

from pmemd.config import Config, NvdimmConfig

from .atomic import write_all

log = structlog.get_logger("pmemd.security")

ZERO_CHUNK = 1 << 20


class FilePmemStore:
    """The PMEM part of one backing file; resources: one descriptor, closed by `close`."""

    def __init__(self, backing: Path, size: int) -> None:
        self._size = size
        self._fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
        self._zeros = bytes(ZERO_CHUNK)

    @classmethod
    def for_nvdimm(cls, nvdimm: NvdimmConfig) -> FilePmemStore:
        return cls(nvdimm.backing, nvdimm.pmem_size)

    @property
    def size(self) -> int:
        return self._size

    def zero(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(f"range [{offset}, {offset + length}) is outside the {self._size}-byte PMEM")
        end = offset + length
        while offset < end:
            n = min(ZERO_CHUNK, end - offset)
            write_all(self._fd, memoryview(self._zeros)[:n], offset)
            offset += n

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def open_pmem_stores(config: Config, stack: contextlib.ExitStack) -> dict[int, FilePmemStore]:
    """A store per Intel-family NVDIMM the guest may erase, keyed by slot.

    None for an `unarmed` DIMM, and none (logged) where the backing file cannot be opened for
    writing (read-only file or filesystem): the erasing functions are then not offered.
    """
    stores: dict[int, FilePmemStore] = {}
    for nvdimm in config.nvdimms:
        if nvdimm.family != "intel" or nvdimm.unarmed:
            continue
        try:
            store = FilePmemStore.for_nvdimm(nvdimm)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            log.info("backing file not writable: security erases not offered", slot=nvdimm.slot, error=str(e))
            continue
        stack.callback(store.close)
        stores[nvdimm.slot] = store
    return stores
