"""Where security erases reach a DIMM's persistent memory: the `PmemStore` protocol.

Like `LabelStore`, it keeps the handlers pure: the daemon's store
(`pmemd.daemon.pmem_file.FilePmemStore`) writes the backing file, tests inject
`MemoryPmemStore`. Offsets are relative to the DIMM's PMEM (the backing file's start).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class PmemStore(Protocol):
    """A DIMM's guest-visible persistent memory, as far as erasing it goes."""

    @property
    def size(self) -> int:
        """The PMEM size in bytes (the backing file less its label area)."""
        ...

    def zero(self, offset: int, length: int) -> None:
        """Overwrite [offset, offset + length) with zeros (not yet durable)."""
        ...

    def flush(self) -> None:
        """Make every `zero` so far durable."""
        ...


class MemoryPmemStore:
    """PMEM in memory, for tests and the simulator."""

    def __init__(self, size: int, *, fill: int = 0) -> None:
        self.data = bytearray([fill]) * size
        self.flushes = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def zero(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range [{offset}, {offset + length}) is outside the {self.size}-byte PMEM")
        self.data[offset : offset + length] = bytes(length)

    def flush(self) -> None:
        self.flushes += 1
