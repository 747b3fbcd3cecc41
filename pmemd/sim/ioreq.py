"""Xen's side of `public/hvm/ioreq.h`: the `ioreq_t` slot, and what `ioreq_send`/`wait_for_io`
in `xen/common/ioreq.c` do with it (reference §1.1, §1.2, §1.5).

Written from Xen's header and source, not from the daemon's `pmemd.ioreq`: the two read the
same page from opposite ends, so a wrong offset or state rule on either side makes a test fail.

    off  0 u64 addr | 8 u64 data | 16 u32 count | 20 u32 size | 24 u32 vp_eport | 28 u16 pad
    off 30 u8 state:4, data_is_ptr:1, dir:1, df:1, pad:1 (bitfields from the LSB) | 31 u8 type

Xen's half of the slot protocol:

* send: the slot must be NONE and its `vp_eport` the server's port for that vCPU, else the
  device model broke it ("device model set bad IO state"/"bad event channel") and the domain
  crashes; the request is copied in with state NONE, then the state is set READY and the
  port notified.
* wait: on every event Xen re-reads the state. A value lower than the one seen before, or
  one above IORESP_READY, crashes the domain ("Weird HVM ioreq state ..."); READY and
  INPROCESS keep it waiting; IORESP_READY completes: `data` is taken (only when the guest
  needs it back) and the slot goes back to NONE.
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass

from construct import Array, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from pmemd.xen.page import PAGE_SIZE

IOREQ_WRITE = 0
IOREQ_READ = 1

STATE_IOREQ_NONE = 0
STATE_IOREQ_READY = 1
STATE_IOREQ_INPROCESS = 2
STATE_IORESP_READY = 3

IOREQ_TYPE_PIO = 0
IOREQ_TYPE_COPY = 1

HVM_IOREQSRV_BUFIOREQ_OFF = 0
XENMEM_RESOURCE_IOREQ_SERVER_FRAME_SYNC = 1  # frame 0 is the buffered page, absent with BUFIOREQ_OFF

ioreq_t = Struct(
    "addr" / Int64ul,
    "data" / Int64ul,
    "count" / Int32ul,
    "size" / Int32ul,
    "vp_eport" / Int32ul,
    "_pad0" / Int16ul,
    "bits" / Int8ul,  # state:4 data_is_ptr:1 dir:1 df:1 _pad1:1, from the LSB
    "type" / Int8ul,
)
"""One vCPU's slot, as Xen declares it."""

HVM_MAX_VCPUS = PAGE_SIZE // ioreq_t.sizeof()  # 128 slots fill the shared page
shared_iopage_t = Struct("vcpu_ioreq" / Array(HVM_MAX_VCPUS, ioreq_t))

IOREQ_SIZE = ioreq_t.sizeof()
# Per-request path: a struct twin of `ioreq_t` (pinned to it by tests) and the field offsets.
SLOT = struct.Struct("<QQIIIHBB")
DATA = struct.Struct("<Q")
EPORT = struct.Struct("<I")
DATA_OFFSET = 8
VP_EPORT_OFFSET = 24
BITS_OFFSET = 30

Page = mmap.mmap | bytearray | memoryview  # the shared page, however it is mapped

_STATE = 0x0F
_DATA_IS_PTR = 1 << 4
_DIR_READ = 1 << 5
_DF = 1 << 6


@dataclass(frozen=True, slots=True)
class Request:
    """The request Xen's emulator builds for a trapped access (`ioreq_t p` in hvmemul)."""

    type: int
    addr: int
    data: int
    count: int
    size: int
    dir: int
    df: bool
    data_is_ptr: bool

    @property
    def is_read(self) -> bool:
        return self.dir == IOREQ_READ


def needs_completion(req: Request) -> bool:
    """`ioreq_needs_completion`: the guest takes `data` back unless it is a pointer or a port write."""
    return not req.data_is_ptr and not (req.type == IOREQ_TYPE_PIO and req.dir == IOREQ_WRITE)


def state_of(bits: int) -> int:
    return bits & _STATE


def _bits(state: int, req: Request) -> int:
    return (state | (_DATA_IS_PTR if req.data_is_ptr else 0) | (_DIR_READ if req.dir == IOREQ_READ else 0)
            | (_DF if req.df else 0))


def slot_offset(vcpu: int) -> int:
    return vcpu * IOREQ_SIZE


def reset_slot(page: Page, vcpu: int, port: int) -> None:
    """An empty slot (state NONE) carrying the vCPU's event-channel port, as Xen leaves it."""
    SLOT.pack_into(page, slot_offset(vcpu), 0, 0, 0, 0, port, 0, 0, 0)


def refuse_send(page: Page, vcpu: int, port: int) -> str | None:
    """Why `ioreq_send` would crash the domain instead of sending on this slot, or None."""
    off = slot_offset(vcpu)
    state = state_of(page[off + BITS_OFFSET])
    if state != STATE_IOREQ_NONE:
        return f"device model set bad IO state {state}"
    (eport,) = EPORT.unpack_from(page, off + VP_EPORT_OFFSET)
    if eport != port:
        return f"device model set bad event channel {eport}"
    return None


def send(page: Page, vcpu: int, port: int, req: Request) -> None:
    """Copy `req` into the slot with state NONE, then publish it as READY (Xen's order)."""
    off = slot_offset(vcpu)
    bits = _bits(STATE_IOREQ_NONE, req)
    SLOT.pack_into(page, off, req.addr, req.data, req.count, req.size, port, 0, bits, req.type)
    page[off + BITS_OFFSET] = bits | STATE_IOREQ_READY


class Wait(enum.Enum):
    """What `wait_for_io` does after reading the slot's state on an event."""

    WAIT = "wait"
    COMPLETE = "complete"
    CRASH = "crash"


def wait_for_io(seen: int, state: int) -> tuple[Wait, str]:
    """`wait_for_io`'s decision for `state`, `seen` being the last state it read (READY at first)."""
    if state < seen:
        return Wait.CRASH, f"Weird HVM ioreq state transition {seen} -> {state}"
    if state == STATE_IORESP_READY:
        return Wait.COMPLETE, ""
    if state in (STATE_IOREQ_READY, STATE_IOREQ_INPROCESS):
        return Wait.WAIT, ""
    return Wait.CRASH, f"Weird HVM ioreq state transition {seen} -> {state}"


def take_response(page: Page, vcpu: int) -> int:
    """IORESP_READY seen: read `data` and hand the slot back (state NONE)."""
    off = slot_offset(vcpu)
    (data,) = DATA.unpack_from(page, off + DATA_OFFSET)
    page[off + BITS_OFFSET] = (page[off + BITS_OFFSET] & ~_STATE) & 0xFF
    return data
