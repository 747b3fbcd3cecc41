"""Intel DIMM functions 4, 5, 6 (revision 1): label area size, read and write.

Layouts per Linux `nfit.h` / QEMU `nvdimm.c` (reference: linux-nfit.md §4, qemu-nvdimm.md §3):

  fn 4  input: none                                 output: size u32, max transfer u32
  fn 5  input: offset u32, length u32                output: exactly `length` bytes
  fn 6  input: offset u32, length u32, data[length]  output: none

A bad range fails the whole call with status 3 and moves no bytes; there are no partial
transfers, because Linux treats a short read as a failed DIMM probe. While the DIMM's media
is refused (locked by its passphrase, or being overwritten: `security.py`) fn 4 answers
extended status 0x10000, which Linux reads as "DIMM capacity locked" (-EACCES): it marks the
DIMM locked and probes no namespace on it; the labels themselves stay readable.
"""

from __future__ import annotations

from construct import Bytes, Check, Int32ul, Struct, Terminated, this

from acpi.dsm_buffer import MAX_INPUT
from acpi.layout import FN_GET_LABEL_DATA, FN_GET_LABEL_SIZE, FN_SET_LABEL_DATA, LABEL_REVISION

from .call import MAX_OUTPUT, Call, InvalidInput, Reply, Status, parse_input
from .devices import Dimm
from .functions import FunctionTable
from .label_store import LabelStore

LabelRange = Struct("offset" / Int32ul, "length" / Int32ul)
"""The (offset, length) pair that opens fn 5 and fn 6 input."""

MAX_LABEL_TRANSFER = min(MAX_OUTPUT, MAX_INPUT - LabelRange.sizeof())
"""Largest label payload one call carries either way: min(read reply, write request).

With our page that is min(4092 - 4, 4080 - 8) = 4072: four bytes under QEMU's 4076, as
our request header also carries the input length. Derived from the layouts so the
advertised value cannot drift from what the page really holds."""

GetLabelSizeInput = Struct(Terminated)
GetLabelSizeOutput = Struct("size" / Int32ul, "max_transfer" / Int32ul)
GetLabelDataInput = Struct("range" / LabelRange, Terminated)
SetLabelDataInput = Struct(
    "range" / LabelRange,
    Check(this.range.length <= MAX_LABEL_TRANSFER),  # cap before reading guest-sized data
    "data" / Bytes(this.range.length),
    Terminated,
)

U32_LIMIT = 1 << 32
CAPACITY_LOCKED = 0x10000
"""Fn 4's extended status bit 0 (Linux `ND_CONFIG_LOCKED`)."""


def check_range(offset: int, length: int, area_size: int) -> None:
    """Reject a transfer that wraps 32 bits, leaves the area or exceeds one call's capacity.

    Errors: `InvalidInput` (status 3) naming the broken bound.
    """
    if length > MAX_LABEL_TRANSFER:
        raise InvalidInput(f"length {length} exceeds the {MAX_LABEL_TRANSFER}-byte maximum transfer")
    if offset + length >= U32_LIMIT:
        raise InvalidInput(f"offset {offset:#x} + length {length:#x} overflows 32 bits")
    if offset + length > area_size:
        raise InvalidInput(f"range [{offset}, {offset + length}) ends past the {area_size}-byte label area")


def get_label_size(call: Call, dimm: Dimm) -> Reply:
    """Fn 4: the label area size and the largest transfer a fn 5 or fn 6 call may ask for."""
    parse_input(GetLabelSizeInput, call.input)
    if dimm.security.media_refused:
        return Reply(CAPACITY_LOCKED)
    size = _store(dimm).size
    return Reply.success(GetLabelSizeOutput.build({"size": size, "max_transfer": MAX_LABEL_TRANSFER}))


def get_label_data(call: Call, dimm: Dimm) -> Reply:
    """Fn 5: exactly `length` bytes from `offset` in the label area."""
    request = parse_input(GetLabelDataInput, call.input)
    store = _store(dimm)
    check_range(request.range.offset, request.range.length, store.size)
    data = store.read(request.range.offset, request.range.length)
    if len(data) != request.range.length:
        raise OSError(f"label store returned {len(data)} of {request.range.length} bytes")
    return Reply.success(data)


def set_label_data(call: Call, dimm: Dimm) -> Reply:
    """Fn 6: store `data` at `offset`; the status is returned only once the data is durable."""
    store = _store(dimm)
    if not store.writable:
        return Reply.failure(Status.NOT_SUPPORTED)
    request = parse_input(SetLabelDataInput, call.input)
    check_range(request.range.offset, request.range.length, store.size)
    store.write(request.range.offset, request.data)
    return Reply.success()


def register_label_functions(table: FunctionTable[Dimm]) -> None:
    """Add fns 4-6 to an Intel DIMM table, offered only by DIMMs with a label area."""
    for function, handler in (
        (FN_GET_LABEL_SIZE, get_label_size),
        (FN_GET_LABEL_DATA, get_label_data),
        (FN_SET_LABEL_DATA, set_label_data),
    ):
        table.register(function, LABEL_REVISION, handler, available=has_labels)


def has_labels(dimm: Dimm) -> bool:
    """Fns 4-6 exist only for a DIMM with a label area (label_size > 0)."""
    return dimm.labels is not None and dimm.labels.size > 0


def _store(dimm: Dimm) -> LabelStore:
    if dimm.labels is None:  # `has_labels` keeps the dispatcher from getting here
        raise RuntimeError(f"DIMM in slot {dimm.config.slot} has no label store")
    return dimm.labels
