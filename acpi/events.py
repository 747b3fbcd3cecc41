"""NVDIMM events: how a device model gets `Notify(…, 0x81)` to the guest's root or DIMM devices.

One layout, two readers (like `dsm_buffer`): the daemon encodes events with `encode_event`
and the AML method built by `nevt_method` decodes them.

The device model queues events and raises GPE `EVENT_GPE`; a small SSDT of its own
(`build_event_ssdt`, published beside the NFIT as a dm-acpi type-0 table) routes that GPE to
`\\_SB.NVDR.NEVT`, as QEMU's DSDT routes `_E04` to the NVDIMM root:

    Scope (\\_GPE) { Method (_E04) { \\_SB.NVDR.NEVT () } }

It is a separate table, not part of the NVDR body, so that a platform DSDT that already
handles this GPE makes only this table fail to load, never the NVDIMM devices.

NEVT reads the notify port (the same DWORD register NCAL writes to ring a call) once per
event: bits 0-7 carry the notify value, bits 8-23 the NFIT handle (0 root, slot + 1 DIMM),
and 0 means "no more". It issues `Notify` on the device the handle names and stops after
`event_bound(dimms)` reads, so neither a broken device model nor an unclaimed port (reads
all-ones, also taken as "no more") can keep the guest in its GPE handler.
"""

from __future__ import annotations

from collections.abc import Iterable

from acpi import dsm_buffer as page
from acpi.aml import (
    METHOD_OBJ,
    Add,
    And,
    Call,
    Else,
    External,
    If,
    LEqual,
    LLess,
    Local,
    LOr,
    Method,
    Notify,
    Path,
    Scope,
    ShiftRight,
    Store,
    TermLike,
    While,
    definition_block_body,
)
from acpi.layout import device_name, nfit_handle
from acpi.table import TableIds, finish_table

EVENT_GPE = 4
"""GPE0 bit the device model raises for NVDIMM events (QEMU's NVDIMM GPE bit)."""
EVENT_METHOD = "NEVT"
EVENT_TABLE_ID = "NVEVENTS"
GPE_HANDLER = f"_E{EVENT_GPE:02X}"  # edge-triggered: the device model raises it per batch
ROOT_PATH = "\\_SB_.NVDR"
VALUE_MASK = 0xFF
HANDLE_SHIFT = 8
HANDLE_MASK = 0xFFFF
NO_EVENT = 0
UNCLAIMED = 0xFFFFFFFF


def encode_event(handle: int, value: int) -> int:
    """The register word for `Notify(<device with handle>, value)`."""
    if not 0 < value <= VALUE_MASK or not 0 <= handle <= HANDLE_MASK:
        raise ValueError(f"event (handle {handle:#x}, value {value:#x}) does not fit the register")
    return handle << HANDLE_SHIFT | value


def decode_event(word: int) -> tuple[int, int] | None:
    """(handle, value) of a register word, or None for "no more events"."""
    if word == UNCLAIMED or word & VALUE_MASK == NO_EVENT:
        return None
    return (word >> HANDLE_SHIFT) & HANDLE_MASK, word & VALUE_MASK


def event_bound(dimm_count: int) -> int:
    """Reads NEVT makes at most: two events per device (root and each DIMM)."""
    return 2 * (1 + dimm_count)


def nevt_method(slots: Iterable[int], *, readable: bool = True) -> Method:
    """NEVT(): drain the event register, notifying each event's device.

    `readable` False (a transport whose notify register cannot be read: QEMU's doorbell)
    gives an empty method, so the namespace is the same either way. Only Local0 (reads
    made; set to the bound once the register runs dry) and Local7 (the word) are used.
    """
    if not readable:
        return Method(EVENT_METHOD, 0, serialized=True)
    slots = sorted(slots)
    count, word = Local(0), Local(7)
    bound = event_bound(len(slots))
    value = And(word, VALUE_MASK)
    handle = And(ShiftRight(word, HANDLE_SHIFT), HANDLE_MASK)
    dispatch: list[TermLike] = [If(LEqual(handle, 0), Notify(ROOT_PATH, value))]
    dispatch += [If(LEqual(handle, nfit_handle(s)), Notify(device_name(s), value)) for s in slots]
    return Method(
        EVENT_METHOD,
        0,
        Store(0, count),
        While(
            LLess(count, bound),
            Store(Path(page.FIELD_NOTIFY), word),
            If(LOr(LEqual(value, NO_EVENT), LEqual(word, UNCLAIMED)), Store(bound, count)),
            Else(*dispatch, Add(count, 1, count)),
        ),
        serialized=True,
    )


def build_event_ssdt(ids: TableIds = TableIds()) -> bytes:
    """An SSDT routing GPE `EVENT_GPE` to NEVT: `Scope(\\_GPE){Method(_E04){\\_SB.NVDR.NEVT()}}`."""
    nevt = f"{ROOT_PATH}.{EVENT_METHOD}"
    body = definition_block_body(
        If(0, External(nevt, METHOD_OBJ, 0)),  # as iasl emits it: old interpreters skip External
        Scope("\\_GPE", Method(GPE_HANDLER, 0, Call(nevt))),
    )
    return finish_table("SSDT", 2, body, ids, oem_table_id=EVENT_TABLE_ID)
