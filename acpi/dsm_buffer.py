"""The DSM page: one layout, read by the generated AML and by the daemon.

The guest's `_DSM` AML and the device model exchange a call through one 4 KiB page.
Unlike QEMU's page (which makes the AML store a fixed 4084-byte field on every call),
this layout carries the input length, so the AML touches only the bytes a call needs:

request (written by the AML)            reply (written by the device model)
  0x00 u32 revision } one QWORD write     0x00 u32 length of the reply, counting itself
  0x04 u32 handle   }                     0x04 ...  payload (length - 4 bytes)
  0x08 u32 function } one QWORD write
  0x0C u32 input length
  0x10 ...  input bytes, QWORD accesses

The revision comes first because a call nobody answers (a dead device model, an unclaimed
page) reads its own request back as the reply: the length word is then the revision, 1 for
every `_DSM` family Linux uses, which is below the shortest reply, so the AML returns a
hardware-error status. (With the NFIT handle there, DIMM 4 onwards would pass for a reply.)

The reply header is read as one QWORD at 0 (length plus the first four payload bytes),
the rest of the payload as QWORDs from 0x08. Variable-length data moves in chunks of
2**k QWORDs, largest first, so a transfer of Q QWORDs costs exactly Q accesses; the AML
declares one dynamic OperationRegion per chunk size (see `chunk_plan`).

Everything here is pure: constants, construct layouts and the access plan that both the
SSDT builder and the simulated guest derive their accesses from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from construct import Bytes, Int32ul, Struct, Terminated, this

PAGE_SIZE = 4096
QWORD = 8

# Request layout.
HEADER_OFFSET = 0x00
HEADER_SIZE = 16  # revision, handle, function, input length
INPUT_OFFSET = 0x10
MAX_INPUT = PAGE_SIZE - INPUT_OFFSET  # 4080 bytes

# Reply layout.
REPLY_LENGTH_OFFSET = 0x00
REPLY_PAYLOAD_OFFSET = 0x04
MAX_PAYLOAD = PAGE_SIZE - REPLY_PAYLOAD_OFFSET  # 4092 bytes
MIN_REPLY_LENGTH = 4
MAX_REPLY_LENGTH = PAGE_SIZE
REPLY_TAIL_OFFSET = 0x08  # payload bytes past the first four, read in QWORD chunks

# Chunk sizes are 2**k QWORDs for k in CHUNK_ORDERS; 2**9 QWORDs cover any page tail.
CHUNK_ORDERS = tuple(range(8, -1, -1))

# Notify register: a 4-byte port write carrying the page's guest-physical address.
NOTIFY_WIDTH = 4
DEFAULT_NOTIFY_PORT = 0x0A18

# Status codes returned in the first u32 of a reply (ACPI/Intel DSM conventions).
STATUS_SUCCESS = 0
STATUS_NOT_SUPPORTED = 1
STATUS_NO_SUCH_DEVICE = 2
STATUS_INVALID_INPUT = 3
STATUS_HARDWARE_ERROR = 4

ROOT_HANDLE = 0
INTEL_BUS_HANDLE = 0xFFFFFFFF  # the root's _DSM with the Intel bus family UUID (no DIMM uses it)

DsmRequestHeader = Struct(
    "revision" / Int32ul,
    "handle" / Int32ul,
    "function" / Int32ul,
    "input_length" / Int32ul,
)
"""The request header the AML writes at offset 0 (two QWORD writes)."""

DsmReply = Struct(
    "length" / Int32ul,
    "payload" / Bytes(this.length - 4),
    Terminated,
)
"""A reply as the AML returns it: the length word and `length - 4` payload bytes."""

# Field names the SSDT declares over these offsets; kept here so the AML, the guest
# driver and the daemon name the same things.
FIELD_HEADER = "HDR0"  # 128 bits at HEADER_OFFSET, QWordAcc
FIELD_REPLY_HEAD = "RHD0"  # 64 bits at REPLY_LENGTH_OFFSET, QWordAcc
FIELD_NOTIFY = "NTFY"  # 32 bits, SystemIO at the notify port, DWordAcc


def input_chunk_field(order: int) -> str:
    """Name of the input field covering 2**order QWORDs."""
    return f"IN{order}_"


def output_chunk_field(order: int) -> str:
    """Name of the output field covering 2**order QWORDs."""
    return f"OU{order}_"


def qwords(nbytes: int) -> int:
    """QWORDs needed to carry `nbytes` bytes."""
    return (nbytes + QWORD - 1) // QWORD


def chunk_plan(nqwords: int) -> list[tuple[int, int]]:
    """Split `nqwords` QWORDs into (qword offset, order) chunks, largest first.

    The chunk of order k starts at qword offset (Q >> (k+1)) << (k+1): the sum of the
    larger chunks before it. The AML computes the same expression at run time.
    """
    if not 0 <= nqwords < 1 << (CHUNK_ORDERS[0] + 1):
        raise ValueError(f"{nqwords} QWORDs do not fit the DSM page")
    return [
        ((nqwords >> (order + 1)) << (order + 1), order)
        for order in CHUNK_ORDERS
        if nqwords & (1 << order)
    ]


Direction = Literal["read", "write"]
Space = Literal["memory", "io"]


@dataclass(frozen=True)
class Access:
    """One guest access the AML performs: a trap in `mmio` mode when space is memory."""

    space: Space
    offset: int  # from the page base (memory) or the notify port (io)
    width: int  # bytes
    direction: Direction


def request_accesses(input_length: int) -> Iterator[Access]:
    """The accesses of a call's request side, in AML order, up to and including the notify."""
    if not 0 <= input_length <= MAX_INPUT:
        raise ValueError(f"input length {input_length} exceeds {MAX_INPUT}")
    for offset in range(HEADER_OFFSET, HEADER_OFFSET + HEADER_SIZE, QWORD):
        yield Access("memory", offset, QWORD, "write")
    yield from _chunk_accesses(INPUT_OFFSET, qwords(input_length), "write")
    yield Access("io", 0, NOTIFY_WIDTH, "write")


def reply_accesses(reply_length: int) -> Iterator[Access]:
    """The accesses the AML makes to read a reply whose length word is `reply_length`.

    The first read is always the reply head; an out-of-bounds length stops there.
    """
    yield Access("memory", REPLY_LENGTH_OFFSET, QWORD, "read")
    if not MIN_REPLY_LENGTH <= reply_length <= MAX_REPLY_LENGTH:
        return
    tail = max(0, reply_length - REPLY_TAIL_OFFSET)
    yield from _chunk_accesses(REPLY_TAIL_OFFSET, qwords(tail), "read")


def _chunk_accesses(base: int, nqwords: int, direction: Direction) -> Iterator[Access]:
    for start, order in chunk_plan(nqwords):
        for i in range(1 << order):
            yield Access("memory", base + (start + i) * QWORD, QWORD, direction)
