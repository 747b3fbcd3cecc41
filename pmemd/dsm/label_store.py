"""Where label handlers read and write: the `LabelStore` protocol and an in-memory store.

The protocol keeps the handlers pure: the real store (`label_file.FileLabelStore`) does
file I/O, tests and the simulator inject `MemoryLabelStore`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LabelStore(Protocol):
    """A DIMM's label area. Callers check bounds; offsets are relative to the area."""

    @property
    def size(self) -> int:
        """The label area's size in bytes (above 0: a DIMM without labels has no store)."""
        ...

    @property
    def writable(self) -> bool:
        """False for a read-only backing: writes are then answered "not supported"."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`; on return it is on stable storage and never torn."""
        ...


class MemoryLabelStore:
    """A label area in memory, for tests and the simulator."""

    def __init__(self, size: int, *, writable: bool = True, fill: int = 0) -> None:
        self._data = bytearray([fill]) * size
        self._writable = writable

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def writable(self) -> bool:
        return self._writable

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length, self.size)
        return bytes(self._data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if not self._writable:
            raise PermissionError("label area is read-only")
        _check_range(offset, len(data), self.size)
        self._data[offset : offset + len(data)] = data


def _check_range(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"range [{offset}, {offset + length}) is outside the {size}-byte label area")
