"""Accesses Xen completes without an ioreq server: guest RAM, host pmem mapped into the
physmap, and the null handler for addresses nobody claims.

A trapped instruction reaches here as a `pmemd.sim.ioreq.Request`. Xen's emulator repeats a
`rep` access `count` times, item i at addr ± i*size (df picks the sign) with 64-bit
wraparound; a port does not move, only the guest-memory side of a string instruction
(`data_is_ptr`, the buffer at `data`) does. A read without a buffer returns the last item
read; the null handler reads all-ones and drops writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pmemd.sim.ioreq import IOREQ_TYPE_PIO, PAGE_SIZE, Request

ADDRESS_MASK = (1 << 64) - 1
ACCESS_SIZES = (1, 2, 4, 8)
MAX_REPS = PAGE_SIZE  # Xen splits a rep so that count*size never exceeds a page


class Handler(Protocol):
    """An intercept's register callbacks (Xen's `hvm_io_ops` read/write, by space)."""

    def port_read(self, port: int, size: int) -> int: ...
    def port_write(self, port: int, size: int, value: int) -> None: ...
    def mmio_read(self, addr: int, size: int) -> int: ...
    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


class Memory(Protocol):
    """Guest RAM, for the buffer of a string instruction."""

    def read(self, gpa: int, n: int) -> bytes: ...
    def write(self, gpa: int, data: bytes) -> None: ...


def all_ones(size: int) -> int:
    """What a read of `size` bytes from nowhere returns."""
    return (1 << (8 * size)) - 1 if size in ACCESS_SIZES else ADDRESS_MASK


def nth(base: int, i: int, step: int, df: bool) -> int:
    """The address of item i when each item moves by `step` bytes."""
    return (base - i * step) & ADDRESS_MASK if df else (base + i * step) & ADDRESS_MASK


def perform(req: Request, handler: Handler, memory: Memory) -> int:
    """Run `req` against `handler`; return the value the guest's register gets (`data`)."""
    size, df = req.size, req.df
    width = all_ones(size)
    read: Callable[[int, int], int]
    write: Callable[[int, int, int], None]
    if req.type == IOREQ_TYPE_PIO:
        read, write, step = handler.port_read, handler.port_write, 0
    else:
        read, write, step = handler.mmio_read, handler.mmio_write, size
    if req.data_is_ptr:
        for i in range(req.count):
            where, buffer = nth(req.addr, i, step, df), nth(req.data, i, size, df)
            if req.is_read:
                memory.write(buffer, (read(where, size) & width).to_bytes(size, "little"))
            else:
                write(where, size, int.from_bytes(memory.read(buffer, size), "little"))
        return req.data
    if not req.is_read:
        for i in range(req.count):
            write(nth(req.addr, i, step, df), size, req.data & width)
        return req.data
    last = 0
    for i in range(req.count):
        last = read(nth(req.addr, i, step, df), size) & width
    return last


class NullHandler:
    """Xen's handler of last resort: reads all-ones, writes dropped."""

    def port_read(self, port: int, size: int) -> int:
        return all_ones(size)

    def mmio_read(self, addr: int, size: int) -> int:
        return all_ones(size)

    def port_write(self, port: int, size: int, value: int) -> None:
        pass

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        pass
