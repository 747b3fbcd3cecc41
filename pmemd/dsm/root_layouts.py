"""Payload layouts of the NFIT root `_DSM` functions 1-5 and 7-9 (revision 1).

Field names and offsets follow Linux's `nd_cmd_ars_*`, `nd_cmd_clear_error`,
`nd_cmd_translate_spa` and `nd_cmd_ars_err_inj*` (reference: linux-nfit.md §5, §7). Output
layouts here start *after* the status word, which the dispatcher writes; offsets in comments
count from the start of the whole reply, as Linux's do.
"""

from __future__ import annotations

from construct import Array, Const, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct, Terminated, this

from acpi.dsm_buffer import MAX_PAYLOAD

from .call import StatusField

FN_ARS_CAP = 1
FN_ARS_START = 2
FN_ARS_STATUS = 3
FN_CLEAR_ERROR = 4
FN_TRANSLATE_SPA = 5
FN_INJECT = 7
FN_INJECT_CLEAR = 8
FN_INJECT_STATUS = 9
ROOT_REVISION = 1

# Root status words beyond call.Status (low 16 bits = status, high 16 = extended status).
ARS_START_BUSY = 6
"""ARS start while a scrub runs: Linux maps low status 6 to -EBUSY."""
ARS_STATUS_BUSY = 1 << 16
ARS_STATUS_INTERRUPTED = 3 << 16
"""With flags bit 0 (overflow) Linux continues with an ARS start at the restart address."""

ARS_TYPE_VOLATILE = 1 << 0
ARS_TYPE_PERSISTENT = 1 << 1
ARS_FLAG_NO_NOTIFY = 1 << 0
ARS_FLAG_RETURN_PREVIOUS = 1 << 1
"""Linux's ND_ARS_RETURN_PREV_DATA: the "short" ARS it runs at region registration."""
ARS_STATUS_FLAG_OVERFLOW = 1 << 0
ARS_CAP_FLAG_NOTIFY = 1 << 0
"""ACPI Query ARS Capabilities flags bit 0: the platform raises root Notify 0x81 on new errors."""
INJECT_OPTION_NOTIFY = 1 << 0

Range = Struct("address" / Int64ul, "length" / Int64ul)

ArsCapInput = Struct("range" / Range, Terminated)
ArsCapOutput = Struct(  # status@0
    "max_ars_out" / Int32ul,  # @4
    "clear_err_unit" / Int32ul,  # @8
    "flags" / Int16ul,  # @12
    Padding(2),  # @14
)

ArsStartInput = Struct(
    "range" / Range,
    "type" / Int16ul,
    "flags" / Int8ul,
    "reserved" / Int8ul[5],
    Terminated,
)
ArsStartOutput = Struct("scrub_time" / Int32ul)  # status@0, scrub_time@4

ArsStatusInput = Struct(Terminated)
ArsRecord = Struct(
    "handle" / Int32ul,
    "reserved" / Const(0, Int32ul),
    "err_address" / Int64ul,
    "length" / Int64ul,
)
ArsStatusHeader = Struct(  # status@0
    "out_length" / Int32ul,  # @4: 48 + 24n, counting the status word (as nfit_test)
    "address" / Int64ul,  # @8
    "length" / Int64ul,  # @16
    "restart_address" / Int64ul,  # @24
    "restart_length" / Int64ul,  # @32
    "type" / Int16ul,  # @40
    "flags" / Int16ul,  # @42
    "num_records" / Int32ul,  # @44
)
ArsStatusOutput = Struct(
    "header" / ArsStatusHeader,
    "records" / Array(this.header.num_records, ArsRecord),  # @48
)

ARS_STATUS_FIXED = StatusField.sizeof() + ArsStatusHeader.sizeof()  # 48
MAX_ARS_RECORDS = (MAX_PAYLOAD - ARS_STATUS_FIXED) // ArsRecord.sizeof()
"""168 records: the most one ARS status reply carries in the DSM page."""
MAX_ARS_OUT = ARS_STATUS_FIXED + MAX_ARS_RECORDS * ArsRecord.sizeof()
"""4080 bytes: ARS cap's max_ars_out, the largest status reply (Linux sizes its buffer by it)."""

ClearErrorInput = Struct("range" / Range, Terminated)
ClearErrorOutput = Struct(Padding(4), "cleared" / Int64ul)  # status@0, reserved@4, cleared@8

TranslateSpaInput = Struct("spa" / Int64ul, Terminated)
TranslatedDevice = Struct("handle" / Int32ul, "reserved" / Const(0, Int32ul), "dpa" / Int64ul)
TranslateSpaOutput = Struct(  # status@0
    "flags" / Int8ul,  # @4
    Padding(3),
    "translate_length" / Int64ul,  # @8
    "num_nvdimms" / Int32ul,  # @16
    "devices" / Array(this.num_nvdimms, TranslatedDevice),  # @20, packed
)

InjectInput = Struct("range" / Range, "options" / Int8ul, Terminated)  # 17 bytes
InjectClearInput = Struct("range" / Range, Terminated)  # 16 bytes
InjectStatusInput = Struct(Terminated)
InjectStatusOutput = Struct(  # status@0
    "count" / Int32ul,  # @4
    "records" / Array(this.count, Range),  # @8
)
MAX_INJECT_RECORDS = (MAX_PAYLOAD - StatusField.sizeof() - Int32ul.sizeof()) // Range.sizeof()
"""255 injected ranges fit one inject status reply."""
