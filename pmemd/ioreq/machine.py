"""The ioreq protocol as data: state tables, request decoding and execution. No I/O.

Rules (Xen `common/ioreq.c` and QEMU `hw/xen/xen-hvm-common.c`, reference §1.3-1.5):

* A slot moves NONE -> READY (Xen) -> INPROCESS (device model) -> IORESP_READY (device
  model) -> NONE (Xen); Xen crashes the domain on a backwards or unknown value, so the
  device model only ever moves forward. Woken with a slot not in READY, it ignores the
  wake-up (`device_model_wakes`).
* Item i of a `rep` request lives at base ± i*size (df picks the sign) with 64-bit
  wraparound; a PIO port does not advance, only the guest buffer does.
* `data` goes back to the guest only when `!data_is_ptr && !(PIO && write)`.

The daemon's reading of the protocol: the simulator enforces Xen's side with its own
(`pmemd.sim.ioreq`), so a rule got wrong here fails against it instead of agreeing with itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from pmemd.ioreq import abi
from pmemd.ioreq.device import Device, GuestMemory

MASK64 = (1 << 64) - 1
VALID_SIZES = (1, 2, 4, 8)
# Xen splits a `rep` so that neither side crosses a page: count*size <= 4096 always.
MAX_REP_COUNT = abi.PAGE_SIZE


class Verdict(enum.Enum):
    SERVE = "serve"  # the slot holds a request to handle
    SPURIOUS = "spurious"  # nothing to do for this wake-up


# The device model on a wake-up: only READY is work.
_DEVICE_MODEL_TABLE: dict[int, Verdict] = {
    abi.STATE_IOREQ_NONE: Verdict.SPURIOUS,
    abi.STATE_IOREQ_READY: Verdict.SERVE,
    abi.STATE_IOREQ_INPROCESS: Verdict.SPURIOUS,
    abi.STATE_IORESP_READY: Verdict.SPURIOUS,
}


def device_model_wakes(state: int) -> Verdict:
    """What the device model does with a slot in `state` when its port fires."""
    return _DEVICE_MODEL_TABLE.get(state, Verdict.SPURIOUS)


@dataclass(frozen=True, slots=True)
class IoRequest:
    """The private copy of a slot the device model works on (QEMU's `req`)."""

    type: int
    addr: int
    data: int
    count: int
    size: int
    dir: int
    df: bool
    data_is_ptr: bool

    @classmethod
    def from_slot(cls, slot: tuple[int, ...]) -> IoRequest:
        """From `abi.SLOT_STRUCT.unpack_from(page, offset)`."""
        addr, data, count, size, _eport, _pad, bits, type_ = slot
        return cls(type_, addr, data, count, size, abi.bits_dir(bits), abi.bits_df(bits), abi.bits_data_is_ptr(bits))

    @property
    def is_read(self) -> bool:
        return self.dir == abi.IOREQ_READ

    @property
    def kind(self) -> str:
        """A short statistics key, e.g. "mmio-read", "pio-write-rep", "invalidate"."""
        kind = _KINDS.get((self.type, self.dir, self.count > 1))
        if kind is None:
            return {abi.IOREQ_TYPE_INVALIDATE: "invalidate", abi.IOREQ_TYPE_PCI_CONFIG: "pci-config"}.get(
                self.type, "unknown"
            )
        return kind


# Every PIO/MMIO kind, made once: `kind` is looked up for every request served.
_KINDS: dict[tuple[int, int, bool], str] = {
    (type_, dir_, rep): f"{base}-{'read' if dir_ == abi.IOREQ_READ else 'write'}{'-rep' if rep else ''}"
    for type_, base in ((abi.IOREQ_TYPE_PIO, "pio"), (abi.IOREQ_TYPE_COPY, "mmio"))
    for dir_ in (abi.IOREQ_READ, abi.IOREQ_WRITE)
    for rep in (False, True)
}


def needs_completion(req: IoRequest) -> bool:
    """Xen's `ioreq_needs_completion`: does the guest take `data` back?"""
    return not req.data_is_ptr and not (req.type == abi.IOREQ_TYPE_PIO and req.dir == abi.IOREQ_WRITE)


def malformed(req: IoRequest) -> str | None:
    """Why this request cannot be served (QEMU would abort), or None if it is well formed."""
    if req.type not in (abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY, abi.IOREQ_TYPE_PCI_CONFIG, abi.IOREQ_TYPE_INVALIDATE):
        return f"unknown ioreq type {req.type}"
    if req.type == abi.IOREQ_TYPE_INVALIDATE:
        return None
    if req.size not in VALID_SIZES:
        return f"size {req.size} not in 1/2/4/8"
    if req.type in (abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_PCI_CONFIG) and req.size > 4:
        return f"{'PIO' if req.type == abi.IOREQ_TYPE_PIO else 'PCI config'} size {req.size} > 4"
    if not 1 <= req.count <= MAX_REP_COUNT:
        return f"count {req.count} outside 1..{MAX_REP_COUNT}"
    if req.count * req.size > abi.PAGE_SIZE:  # Xen clips every rep access to one page
        return f"rep access of {req.count} × {req.size} bytes exceeds one page"
    if req.type == abi.IOREQ_TYPE_PCI_CONFIG and req.count != 1:
        return f"PCI config count {req.count} != 1"
    return None


def unhandled_result(req: IoRequest) -> int:
    """`data` for a request nobody serves: all-ones for reads (Xen's null handler)."""
    if req.is_read and not req.data_is_ptr:
        return all_ones(req.size)
    return req.data


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1 if size in VALID_SIZES else MASK64


def item_address(base: int, i: int, size: int, df: bool) -> int:
    """Item i's address: base ± i*size with 64-bit wraparound (QEMU lets it truncate)."""
    return (base - i * size if df else base + i * size) & MASK64


def buffer_span(req: IoRequest) -> tuple[int, int] | None:
    """[lo, hi) of guest RAM a data_is_ptr request touches, or None (wrapping, no pointer, or a
    type that moves no data: only PIO and MMIO copy through a buffer; an invalidate or PCI
    config request with the bit set has none to map)."""
    if not req.data_is_ptr or req.type not in (abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY):
        return None
    last = item_address(req.data, req.count - 1, req.size, req.df)
    lo, hi = (last, req.data + req.size) if req.df else (req.data, last + req.size)
    return (lo, hi) if lo < hi <= MASK64 + 1 else None


@dataclass(frozen=True, slots=True)
class SingleAccess:
    """One kind of single access (count 1, the value in the slot), ready to run: nearly every
    request is one, so the server finds it with one table lookup on the raw slot fields instead
    of decoding an `IoRequest` and checking it with `malformed` (~5 µs of Python natively, a
    tenth of a trap's round trip in a nested dom0)."""

    kind: str
    size: int
    mask: int
    read: Callable[[int, int], int] | None  # set for reads
    write: Callable[[int, int, int], None] | None  # set for writes
    completes: bool  # `needs_completion`: the guest takes `data` back

    def run(self, addr: int, data: int) -> int:
        """The slot's new `data` (`execute` for this request); device errors propagate."""
        if self.read is not None:
            return self.read(addr, self.size) & self.mask
        assert self.write is not None
        self.write(addr, self.size, data & self.mask)
        return data

    def unhandled(self, data: int) -> int:
        """`unhandled_result`: all-ones for a read, `data` unchanged for a write."""
        return self.mask if self.read is not None else data


# The bits that pick a single access's handler: direction and data_is_ptr (state is READY
# when looked up; df does not matter for one item).
SINGLE_BITS = abi.DIR_BIT | abi.DATA_IS_PTR_BIT


def single_accesses(device: Device) -> dict[tuple[int, int, int], SingleAccess]:
    """Every well-formed single PIO or MMIO access to `device`, keyed by the slot's
    (type, size, bits & SINGLE_BITS); a count-1 slot whose key is absent takes the general path
    (`malformed`, `execute`)."""
    table: dict[tuple[int, int, int], SingleAccess] = {}
    for type_, sizes, read, write in (
        (abi.IOREQ_TYPE_PIO, (1, 2, 4), device.port_read, device.port_write),
        (abi.IOREQ_TYPE_COPY, VALID_SIZES, device.mmio_read, device.mmio_write),
    ):
        for size in sizes:
            for dir_, bits in ((abi.IOREQ_READ, abi.DIR_BIT), (abi.IOREQ_WRITE, 0)):
                reads = dir_ == abi.IOREQ_READ
                table[type_, size, bits] = SingleAccess(
                    _KINDS[type_, dir_, False], size, all_ones(size), read if reads else None,
                    None if reads else write, reads or type_ != abi.IOREQ_TYPE_PIO)
    return table


def execute(req: IoRequest, device: Device, memory: GuestMemory) -> int:
    """Perform a well-formed PIO or MMIO request; return the slot's new `data`.

    Follows QEMU's `cpu_ioreq_pio`/`cpu_ioreq_move`: `count` items, the device address
    advancing for MMIO only, the guest buffer (data_is_ptr) advancing for both.
    """
    size = req.size
    mask = all_ones(size)
    dev_read: Callable[[int, int], int]
    dev_write: Callable[[int, int, int], None]
    if req.type == abi.IOREQ_TYPE_PIO:
        dev_read, dev_write, step = device.port_read, device.port_write, 0
    else:
        dev_read, dev_write, step = device.mmio_read, device.mmio_write, size
    addr, df = req.addr, req.df
    if not req.data_is_ptr:
        if req.is_read:
            value = 0
            for i in range(req.count):
                value = dev_read(item_address(addr, i, step, df), size) & mask
            return value
        value = req.data & mask
        for i in range(req.count):
            dev_write(item_address(addr, i, step, df), size, value)
        return req.data
    for i in range(req.count):
        buf = item_address(req.data, i, size, df)
        if req.is_read:
            value = dev_read(item_address(addr, i, step, df), size) & mask
            memory.write(buf, value.to_bytes(size, "little"))
        else:
            dev_write(item_address(addr, i, step, df), size, int.from_bytes(memory.read(buf, size), "little"))
    return req.data
