"""Xen `public/hvm/ioreq.h`: the synchronous `ioreq_t` slot and the shared page.

The daemon's copy, declared with construct; the simulated Xen declares its own from the
header (`pmemd.sim.ioreq`), so a wrong offset on either side fails a test. The bitfield
byte at offset 30 is kept as a raw integer with accessors, because C bitfields on x86 are
allocated from the LSB and construct's `BitStruct` reads MSB-first (and is slow):

    bits 0-3 state | bit 4 data_is_ptr | bit 5 dir (1 = read) | bit 6 df | bit 7 pad

The hot path (`pmemd.ioreq.server`) uses `struct` on the offsets pinned here
(`SLOT_STRUCT`, `*_OFFSET`); tests check both agree byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from construct import Array, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from pmemd.xen.page import PAGE_SIZE

# IOREQ_{READ,WRITE}: `dir` bit values.
IOREQ_WRITE = 0
IOREQ_READ = 1

# STATE_*: the slot's 4-bit state; Xen crashes the domain on a backwards or unknown value.
STATE_IOREQ_NONE = 0
STATE_IOREQ_READY = 1
STATE_IOREQ_INPROCESS = 2
STATE_IORESP_READY = 3

# IOREQ_TYPE_*: `type` byte values.
IOREQ_TYPE_PIO = 0  # port I/O; addr is the port
IOREQ_TYPE_COPY = 1  # MMIO; addr is the guest physical address
IOREQ_TYPE_PCI_CONFIG = 2  # addr = SBDF << 32 | register
IOREQ_TYPE_TIMEOFFSET = 7  # RTC offset, only ever buffered
IOREQ_TYPE_INVALIDATE = 8  # drop the mapcache; sent synchronously to every enabled server

# HVM_IOREQSRV_BUFIOREQ_*: `handle_bufioreq` argument of create_ioreq_server.
HVM_IOREQSRV_BUFIOREQ_OFF = 0
HVM_IOREQSRV_BUFIOREQ_LEGACY = 1
HVM_IOREQSRV_BUFIOREQ_ATOMIC = 2

# XENMEM_resource_ioreq_server frames: 0 = buffered page, 1 = synchronous page.
IOREQ_RESOURCE_FRAME_BUFFERED = 0
IOREQ_RESOURCE_FRAME_SYNC = 1

IOREQ_SIZE = 32
MAX_VCPUS = PAGE_SIZE // IOREQ_SIZE  # 128 = HVM_MAX_VCPUS

# Bitfield byte layout (offset 30).
STATE_MASK = 0x0F
DATA_IS_PTR_BIT = 0x10
DIR_BIT = 0x20
DF_BIT = 0x40

ioreq_t = Struct(
    "addr" / Int64ul * "guest physical address (MMIO), port (PIO) or SBDF<<32|reg (PCI config)",
    "data" / Int64ul * "value, or the guest physical address of a buffer if data_is_ptr",
    "count" / Int32ul * "repetitions (rep prefix); 1 for plain accesses",
    "size" / Int32ul * "bytes per item: 1, 2, 4 or 8 (PIO never 8)",
    "vp_eport" / Int32ul * "Xen-side event channel port for this vCPU",
    "_pad0" / Int16ul,
    "bits" / Int8ul * "state:4 | data_is_ptr:1 | dir:1 | df:1 | pad:1, LSB first",
    "type" / Int8ul * "IOREQ_TYPE_*",
)
"""One synchronous ioreq slot (`ioreq_t`, 32 bytes)."""

shared_iopage_t = Struct("vcpu_ioreq" / Array(MAX_VCPUS, ioreq_t))
"""The synchronous ioreq page: one `ioreq_t` per vCPU, indexed by vcpu_id."""

# Offsets of the fields, for the hot paths; pinned against `ioreq_t` by tests.
ADDR_OFFSET = 0
DATA_OFFSET = 8
COUNT_OFFSET = 16
SIZE_OFFSET = 20
VP_EPORT_OFFSET = 24
BITS_OFFSET = 30
TYPE_OFFSET = 31

# struct twin of `ioreq_t` (addr, data, count, size, vp_eport, pad, bits, type): the hot
# paths use it with pack_into/unpack_from, ~10x cheaper than construct's parse per request.
SLOT_STRUCT = struct.Struct("<QQIIIHBB")
DATA_STRUCT = struct.Struct("<Q")


def make_bits(state: int, *, dir: int = IOREQ_WRITE, data_is_ptr: bool = False, df: bool = False) -> int:
    """The bitfield byte for the given fields."""
    if not 0 <= state <= STATE_MASK:
        raise ValueError(f"state {state} does not fit 4 bits")
    return (
        state
        | (DATA_IS_PTR_BIT if data_is_ptr else 0)
        | (DIR_BIT if dir == IOREQ_READ else 0)
        | (DF_BIT if df else 0)
    )


def bits_state(bits: int) -> int:
    return bits & STATE_MASK


def bits_data_is_ptr(bits: int) -> bool:
    return bool(bits & DATA_IS_PTR_BIT)


def bits_dir(bits: int) -> int:
    return IOREQ_READ if bits & DIR_BIT else IOREQ_WRITE


def bits_df(bits: int) -> bool:
    return bool(bits & DF_BIT)


def with_state(bits: int, state: int) -> int:
    """`bits` with its state nibble replaced."""
    return (bits & ~STATE_MASK & 0xFF) | (state & STATE_MASK)


def slot_offset(vcpu: int) -> int:
    """Byte offset of vCPU `vcpu`'s slot in the shared page."""
    if not 0 <= vcpu < MAX_VCPUS:
        raise ValueError(f"vcpu {vcpu} outside 0..{MAX_VCPUS - 1}")
    return vcpu * IOREQ_SIZE


@dataclass(frozen=True)
class Ioreq:
    """A decoded slot with the bitfield split out; `build()` is its exact inverse."""

    addr: int
    data: int
    count: int
    size: int
    vp_eport: int
    state: int
    data_is_ptr: bool
    dir: int
    df: bool
    type: int
    pad0: int = 0
    pad_bit: bool = False

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview) -> Ioreq:
        c = ioreq_t.parse(bytes(raw[:IOREQ_SIZE]))
        return cls(
            addr=c.addr,
            data=c.data,
            count=c.count,
            size=c.size,
            vp_eport=c.vp_eport,
            state=bits_state(c.bits),
            data_is_ptr=bits_data_is_ptr(c.bits),
            dir=bits_dir(c.bits),
            df=bits_df(c.bits),
            type=c.type,
            pad0=c._pad0,
            pad_bit=bool(c.bits & 0x80),
        )

    @property
    def bits(self) -> int:
        return make_bits(self.state, dir=self.dir, data_is_ptr=self.data_is_ptr, df=self.df) | (
            0x80 if self.pad_bit else 0
        )

    def build(self) -> bytes:
        return ioreq_t.build(
            dict(
                addr=self.addr,
                data=self.data,
                count=self.count,
                size=self.size,
                vp_eport=self.vp_eport,
                _pad0=self.pad0,
                bits=self.bits,
                type=self.type,
            )
        )
PORT_STRUCT = struct.Struct("<I")
