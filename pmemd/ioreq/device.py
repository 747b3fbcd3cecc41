"""What a device served by `pmemd.ioreq.server.IoreqServer` provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class IoRange:
    """A claimed range, end inclusive as in `map_io_range_to_ioreq_server`."""

    is_mmio: bool
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad range [{self.start:#x}, {self.end:#x}]")


class Device(Protocol):
    """Register-level callbacks; synchronous (they run between two checkpoints).

    Reads return the value (the server masks it to `size`); writes get `value`
    already masked to `size` bytes. An exception is logged and the access completes
    as unhandled (reads all-ones).
    """

    def port_read(self, port: int, size: int) -> int: ...
    def port_write(self, port: int, size: int, value: int) -> None: ...
    def mmio_read(self, addr: int, size: int) -> int: ...
    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


class GuestMemory(Protocol):
    """Guest RAM as the device model sees it through foreign mappings."""

    def read(self, gpa: int, n: int) -> bytes: ...
    def write(self, gpa: int, data: bytes) -> None: ...
