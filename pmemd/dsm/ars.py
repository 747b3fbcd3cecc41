"""NFIT root functions 1-4: ARS capabilities, start, status and clear uncorrectable error.

Semantics (reference: linux-nfit.md §5; layouts in `root_layouts`):

  fn 1 cap     range must lie in one PMEM SPA range (else 3); ext status "persistent scrub",
               max_ars_out = the largest status reply the page carries, clear unit 256.
  fn 2 start   range in one SPA range, type persistent (volatile → 1, unknown → 3), known
               flags only (else 3); while a scrub sweeps → 6. Flags 0x02 (return previous
               data) settles at once from the known poison.
  fn 3 status  no scrub yet → 0 with an empty body (as nfit_test); sweeping → 0x10000;
               settled → records clipped to the started range, and when the sweep stopped
               at the reply's capacity, 0x30000 + overflow flag + restart address/length.
  fn 4 clear   range aligned to the clear unit and in one SPA range (else 3): the poison
               there is forgotten and `cleared` = length.
"""

from __future__ import annotations

from pmemd.config import NvdimmConfig

from .call import Call, InvalidInput, Reply, Status, parse_input
from .devices import Root, slot_to_handle
from .functions import FunctionTable
from .poison import PoisonLimitError
from .root_layouts import (
    ARS_CAP_FLAG_NOTIFY,
    ARS_FLAG_NO_NOTIFY,
    ARS_FLAG_RETURN_PREVIOUS,
    ARS_START_BUSY,
    ARS_STATUS_BUSY,
    ARS_STATUS_FIXED,
    ARS_STATUS_FLAG_OVERFLOW,
    ARS_STATUS_INTERRUPTED,
    ARS_TYPE_PERSISTENT,
    ARS_TYPE_VOLATILE,
    FN_ARS_CAP,
    FN_ARS_START,
    FN_ARS_STATUS,
    FN_CLEAR_ERROR,
    MAX_ARS_OUT,
    ROOT_REVISION,
    ArsCapInput,
    ArsCapOutput,
    ArsRecord,
    ArsStartInput,
    ArsStartOutput,
    ArsStatusInput,
    ArsStatusOutput,
    ClearErrorInput,
    ClearErrorOutput,
)
from .spa import pmem_holding

CLEAR_ERR_UNIT = 256
"""Bytes: the granule of poison clearing (nfit_test's value); a power of two, as Linux requires."""

ARS_CAP_STATUS = ARS_TYPE_PERSISTENT << 16
"""Status word of a successful cap: low 0, extended = the scrub types offered (persistent)."""


def ars_capabilities(call: Call, root: Root) -> Reply:
    """Fn 1: what ARS can do for a range of this guest's persistent memory."""
    request = parse_input(ArsCapInput, call.input)
    _holding(root, request.range.address, request.range.length)
    output = ArsCapOutput.build(
        {"max_ars_out": MAX_ARS_OUT, "clear_err_unit": CLEAR_ERR_UNIT, "flags": ARS_CAP_FLAG_NOTIFY}
    )
    return Reply(ARS_CAP_STATUS, output)


def ars_start(call: Call, root: Root) -> Reply:
    """Fn 2: begin scrubbing a range; refused with 6 while another scrub sweeps."""
    request = parse_input(ArsStartInput, call.input)
    _holding(root, request.range.address, request.range.length)
    if request.flags & ~(ARS_FLAG_NO_NOTIFY | ARS_FLAG_RETURN_PREVIOUS):
        raise InvalidInput(f"reserved ARS start flags {request.flags:#x}")
    if request.type == 0 or request.type & ~(ARS_TYPE_VOLATILE | ARS_TYPE_PERSISTENT):
        raise InvalidInput(f"ARS type {request.type:#x} names no scrub type")
    if request.type & ARS_TYPE_VOLATILE:
        return Reply.failure(Status.NOT_SUPPORTED)
    media = root.media
    now = media.now()
    if media.ars.busy(now):
        return Reply(ARS_START_BUSY)
    scrub = media.ars.start(
        media.poison,
        request.range.address,
        request.range.length,
        request.type,
        bool(request.flags & ARS_FLAG_RETURN_PREVIOUS),
        now,
    )
    media.scrub_started()
    return Reply.success(ArsStartOutput.build({"scrub_time": media.ars.estimated_seconds(scrub, now)}))


def ars_status(call: Call, root: Root) -> Reply:
    """Fn 3: busy, or the last scrub's records (one reply's worth, then a restart point)."""
    parse_input(ArsStatusInput, call.input)
    media = root.media
    scrub = media.ars.current
    if scrub is None:
        return Reply.success(_status_output(0, 0, 0, 0, 0, 0, []))
    result = media.ars.settle(media.poison, media.now())
    if result is None:
        return Reply(ARS_STATUS_BUSY, _status_output(scrub.address, scrub.length, 0, 0, scrub.type, 0, []))
    handle = slot_to_handle(_holding(root, result.address, result.length).slot)
    records = [{"handle": handle, "err_address": a, "length": n} for a, n in result.records]
    output = _status_output(
        result.address,
        result.length,
        result.restart_address,
        result.restart_length,
        result.type,
        ARS_STATUS_FLAG_OVERFLOW if result.overflowed else 0,
        records,
    )
    return Reply(ARS_STATUS_INTERRUPTED if result.overflowed else Status.SUCCESS, output)


def clear_error(call: Call, root: Root) -> Reply:
    """Fn 4: forget the poison in a clear-unit-aligned range; all of it or nothing."""
    request = parse_input(ClearErrorInput, call.input)
    address, length = request.range.address, request.range.length
    if address % CLEAR_ERR_UNIT or length % CLEAR_ERR_UNIT:
        raise InvalidInput(f"clear range ({address:#x}, {length:#x}) is not {CLEAR_ERR_UNIT}-byte aligned")
    _holding(root, address, length)
    try:
        root.media.poison.remove(address, length)
    except PoisonLimitError:  # the split would pass the bound: nothing was cleared
        return Reply.failure(Status.HARDWARE_ERROR)
    return Reply.success(ClearErrorOutput.build({"cleared": length}))


def register_ars_functions(table: FunctionTable[Root]) -> None:
    """Add fns 1-4 (revision 1) to the NFIT root table."""
    for function, handler in (
        (FN_ARS_CAP, ars_capabilities),
        (FN_ARS_START, ars_start),
        (FN_ARS_STATUS, ars_status),
        (FN_CLEAR_ERROR, clear_error),
    ):
        table.register(function, ROOT_REVISION, handler)


def _holding(root: Root, address: int, length: int) -> NvdimmConfig:
    nvdimm = pmem_holding(root.nvdimms, address, length)
    if nvdimm is None:
        raise InvalidInput(f"range ({address:#x}, {length:#x}) is not inside one persistent-memory SPA range")
    return nvdimm


def _status_output(
    address: int,
    length: int,
    restart_address: int,
    restart_length: int,
    scrub_type: int,
    flags: int,
    records: list[dict[str, int]],
) -> bytes:
    out_length = ARS_STATUS_FIXED + len(records) * ArsRecord.sizeof()
    return ArsStatusOutput.build(
        {
            "header": {
                "out_length": out_length,
                "address": address,
                "length": length,
                "restart_address": restart_address,
                "restart_length": restart_length,
                "type": scrub_type,
                "flags": flags,
                "num_records": len(records),
            },
            "records": records,
        }
    )
