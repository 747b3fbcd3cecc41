"""The NVDIMM namespace: root device NVDR (ACPI0012) and one NVxx child per DIMM.

One builder, two outputs: a complete SSDT (`build_ssdt`), and the bare body of
Device(NVDR) (`build_nvdr_body`) that hvmloader wraps as Scope(\\_SB){Device(NVDR){…}}
itself (dm-acpi type 1).

Every `_DSM` and `_LSx` method funnels into NCAL, which moves a call through the DSM
page (acpi/dsm_buffer.py) touching only what the call needs:

* the 16-byte header as two QWORD writes;
* the input bytes as QWORD writes in power-of-two chunks (one dynamic region per chunk
  size), so Q QWORDs of input cost Q accesses;
* one DWORD write of the page address to the notify port;
* the reply head as one QWORD read (the length word and the first four payload bytes);
* the rest of the payload as QWORD reads in chunks, again exactly as many as needed.

QEMU's NCAL stores Arg3 into a 4084-byte field instead: about 1 024 trapped writes on
every call. The AML never trusts the reply: a length outside [4, page size] yields a
status-only buffer with status 4 (hardware error), so a broken device model cannot make
guest AML fault. Integer width does not matter: the AML builds and reads the header
through buffers, so it behaves the same under 32-bit (revision 1) and 64-bit tables.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from acpi import dsm_buffer as page
from acpi.aml import (
    DWORD_ACC,
    PRESERVE,
    QWORD_ACC,
    SYSTEM_IO,
    SYSTEM_MEMORY,
    TYPE_BUFFER,
    TYPE_PACKAGE,
    WRITE_AS_ZEROS,
    Add,
    And,
    Arg,
    Buffer,
    Call,
    Concatenate,
    CreateDWordField,
    DerefOf,
    Device,
    Field,
    FieldUnit,
    If,
    Index,
    LAnd,
    LEqual,
    LGreater,
    LLess,
    LNotEqual,
    Local,
    LOr,
    Method,
    Mid,
    Name,
    ObjectType,
    OperationRegion,
    Package,
    Path,
    RawAml,
    Return,
    Scope,
    ShiftLeft,
    ShiftRight,
    SizeOf,
    Store,
    String,
    Subtract,
    Term,
    TermLike,
    ToBuffer,
    Uuid,
    definition_block_body,
)
from acpi.doorbell import doorbell_objects, doorbell_ring
from acpi.events import nevt_method
from acpi.layout import (
    FN_GET_LABEL_DATA,
    FN_GET_LABEL_SIZE,
    FN_SET_LABEL_DATA,
    INTEL_BUS_UUID,
    LABEL_REVISION,
    ROOT_UUID,
    Dimm,
    DsmPage,
    device_name,
    nfit_handle,
)
from acpi.table import TableIds, finish_table

SSDT_REVISION = 2
SSDT_TABLE_ID = "NVDIMM"
ROOT_DEVICE = "NVDR"
ROOT_HID = "ACPI0012"

# Buffer fields over HBUF, in DsmRequestHeader order: revision, handle, function, length.
HEADER_FIELDS = ("HREV", "HHDL", "HFUN", "HLEN")


def status_buffer(status: int) -> Buffer:
    """A status-only reply, shaped like the daemon's (one little-endian u32)."""
    return Buffer(status.to_bytes(4, "little"))


def _chunk_offset(base: int, count: Local, order: int) -> TermLike:
    """Byte address of the order-k chunk: base + ((Q >> (k+1)) << (k+1)) * 8."""
    return Add(base, ShiftLeft(ShiftRight(count, order + 1), order + 4))


def _ncal(dsm: DsmPage) -> Method:
    """NCAL(revision, function, input buffer, handle) -> reply payload buffer."""
    rev, fn, inp, handle = Arg(0), Arg(1), Arg(2), Arg(3)
    in_len, in_qwords, reply_head, reply_len, reply, out_qwords = (
        Local(1), Local(2), Local(3), Local(4), Local(5), Local(6),
    )
    base = dsm.address
    body: list[TermLike] = [
        Store(SizeOf(inp), in_len),
        If(LGreater(in_len, page.MAX_INPUT), Return(status_buffer(page.STATUS_INVALID_INPUT))),
    ]
    for field_name, value in zip(HEADER_FIELDS, (rev, handle, fn, in_len)):
        body.append(Store(value, Path(field_name)))
    body.append(Store(Path("HBUF"), Path(page.FIELD_HEADER)))
    body.append(Store(ShiftRight(Add(in_len, page.QWORD - 1), 3), in_qwords))
    for order in page.CHUNK_ORDERS:
        region, field_name = f"RIN{order}", page.input_chunk_field(order)
        offset = ShiftLeft(ShiftRight(in_qwords, order + 1), order + 4)
        body += [
            OperationRegion(region, SYSTEM_MEMORY, _chunk_offset(base + page.INPUT_OFFSET, in_qwords, order),
                            page.QWORD << order),
            Field(region, FieldUnit(field_name, 64 << order), access=QWORD_ACC, update=WRITE_AS_ZEROS),
            If(And(in_qwords, 1 << order), Store(Mid(inp, offset, page.QWORD << order), Path(field_name))),
        ]
    body += [
        *_notify(dsm),
        Store(Path(page.FIELD_REPLY_HEAD), reply_head),
        And(reply_head, 0xFFFFFFFF, reply_len),
        If(
            LOr(LLess(reply_len, page.MIN_REPLY_LENGTH), LGreater(reply_len, page.MAX_REPLY_LENGTH)),
            Return(status_buffer(page.STATUS_HARDWARE_ERROR)),
        ),
        Store(Mid(ToBuffer(reply_head), page.REPLY_PAYLOAD_OFFSET, 4), reply),
        Store(ShiftRight(Subtract(reply_len, 1), 3), out_qwords),
    ]
    for order in page.CHUNK_ORDERS:
        region, field_name = f"ROU{order}", page.output_chunk_field(order)
        body += [
            OperationRegion(region, SYSTEM_MEMORY, _chunk_offset(base + page.REPLY_TAIL_OFFSET, out_qwords, order),
                            page.QWORD << order),
            Field(region, FieldUnit(field_name, 64 << order), access=QWORD_ACC, update=PRESERVE),
            If(And(out_qwords, 1 << order), Concatenate(reply, ToBuffer(Path(field_name)), reply)),
        ]
    body.append(Return(Mid(reply, 0, Subtract(reply_len, 4))))
    return Method("NCAL", 4, *body, serialized=True)


def _static_objects(dsm: DsmPage) -> list[Term]:
    """The page header, the notify register and the header scratch buffer.

    Static, so iasl does not warn and the regions are set up once; only NCAL (a
    Serialized method) touches them, so sharing them between DIMMs is safe.
    """
    base = dsm.address
    terms: list[Term] = [
        OperationRegion("NPAG", SYSTEM_MEMORY, base + page.HEADER_OFFSET, page.HEADER_SIZE),
        Field("NPAG", FieldUnit(page.FIELD_HEADER, 8 * page.HEADER_SIZE), access=QWORD_ACC, update=WRITE_AS_ZEROS),
        Field("NPAG", FieldUnit(page.FIELD_REPLY_HEAD, 8 * page.QWORD), access=QWORD_ACC, update=PRESERVE),
        *_notify_objects(dsm),
        Name("HBUF", Buffer(size=page.HEADER_SIZE)),
    ]
    for i, field_name in enumerate(HEADER_FIELDS):
        terms.append(CreateDWordField(Path("HBUF"), 4 * i, field_name))
    return terms


def _notify_objects(dsm: DsmPage) -> list[Term]:
    """The notify register: Xen's trapped DWORD port, or QEMU's doorbell (`acpi.doorbell`)."""
    if dsm.doorbell is not None:
        return doorbell_objects(dsm)
    return [
        OperationRegion("NPIO", SYSTEM_IO, dsm.notify_port, page.NOTIFY_WIDTH),
        Field("NPIO", FieldUnit(page.FIELD_NOTIFY, 8 * page.NOTIFY_WIDTH), access=DWORD_ACC, update=WRITE_AS_ZEROS),
    ]


def _notify(dsm: DsmPage) -> list[TermLike]:
    """NCAL's notify step: one trapped write (Xen), or ring and wait (QEMU's doorbell)."""
    if dsm.doorbell is not None:
        return doorbell_ring(dsm, dsm.doorbell.timeout_ms)
    return [Store(dsm.address, Path(page.FIELD_NOTIFY))]


def _ninp() -> Method:
    """NINP(Arg3) -> the input buffer: the first element of a Package if it is a Buffer."""
    element = Local(0)
    return Method(
        "NINP",
        1,
        If(
            LEqual(ObjectType(Arg(0)), TYPE_PACKAGE),
            If(
                LGreater(SizeOf(Arg(0)), 0),
                Store(DerefOf(Index(Arg(0), 0)), element),
                If(LEqual(ObjectType(element), TYPE_BUFFER), Return(element)),
            ),
        ),
        Return(Buffer(size=0)),
    )


def _nsta() -> Method:
    """NSTA(reply) -> its status word, or 4 (hardware error) when it has none."""
    return Method(
        "NSTA",
        1,
        If(LLess(SizeOf(Arg(0)), 4), Return(page.STATUS_HARDWARE_ERROR)),
        CreateDWordField(Arg(0), 0, "STAT"),
        Return(Path("STAT")),
        serialized=True,
    )


def _nlsi() -> Method:
    """NLSI(reply) -> _LSI's Package {status, label area size, max transfer}."""
    status = Local(0)
    return Method(
        "NLSI",
        1,
        Name("RPKG", Package(0, 0, 0)),
        Store(Call("NSTA", Arg(0)), status),
        If(LAnd(LEqual(status, 0), LLess(SizeOf(Arg(0)), 12)), Store(page.STATUS_HARDWARE_ERROR, status)),
        Store(status, Index(Path("RPKG"), 0)),
        If(
            LEqual(status, 0),
            CreateDWordField(Arg(0), 4, "LSIZ"),
            CreateDWordField(Arg(0), 8, "LMAX"),
            Store(Path("LSIZ"), Index(Path("RPKG"), 1)),
            Store(Path("LMAX"), Index(Path("RPKG"), 2)),
        ),
        Return(Path("RPKG")),
        serialized=True,
    )


def _nlsr() -> Method:
    """NLSR(reply, length) -> _LSR's Package {status, data}; data only with status 0."""
    status = Local(0)
    return Method(
        "NLSR",
        2,
        Name("RPKG", Package(0, Buffer(size=0))),
        Store(Call("NSTA", Arg(0)), status),
        If(LAnd(LEqual(status, 0), LNotEqual(SizeOf(Arg(0)), Add(Arg(1), 4))), Store(page.STATUS_HARDWARE_ERROR, status)),
        Store(status, Index(Path("RPKG"), 0)),
        If(LEqual(status, 0), Store(Mid(Arg(0), 4, Arg(1)), Index(Path("RPKG"), 1))),
        Return(Path("RPKG")),
        serialized=True,
    )


def _label_input() -> list[Term]:
    """LIN = {offset u32, length u32} from Arg0/Arg1, as label functions 5 and 6 take it."""
    return [
        Name("LIN_", Buffer(size=8)),
        CreateDWordField(Path("LIN_"), 0, "LOFF"),
        CreateDWordField(Path("LIN_"), 4, "LLEN"),
        Store(Arg(0), Path("LOFF")),
        Store(Arg(1), Path("LLEN")),
    ]


def _dsm_method(*families: tuple[str, TermLike]) -> Method:
    """_DSM: each known (UUID, handle) goes to the device model under that handle; any other
    UUID is answered here, untrapped. The root has two families, so the Intel bus family
    travels under its own handle (`INTEL_BUS_HANDLE`): the DSM page carries no UUID."""
    return Method(
        "_DSM",
        4,
        If(
            LEqual(ObjectType(Arg(0)), TYPE_BUFFER),
            *(
                If(LEqual(Arg(0), Uuid(family)), Return(Call("NCAL", Arg(1), Arg(2), Call("NINP", Arg(3)), handle)))
                for family, handle in families
            ),
        ),
        If(LEqual(Arg(2), 0), Return(Buffer(b"\x00"))),
        Return(status_buffer(page.STATUS_NOT_SUPPORTED)),
    )


def _label_methods(handle: TermLike) -> list[Method]:
    return [
        Method(
            "_LSI", 0,
            Return(Call("NLSI", Call("NCAL", LABEL_REVISION, FN_GET_LABEL_SIZE, Buffer(size=0), handle))),
            serialized=True,
        ),
        Method(
            "_LSR", 2,
            *_label_input(),
            Return(Call("NLSR", Call("NCAL", LABEL_REVISION, FN_GET_LABEL_DATA, Path("LIN_"), handle), Arg(1))),
            serialized=True,
        ),
        Method(
            "_LSW", 3,
            *_label_input(),
            Return(Call("NSTA", Call("NCAL", LABEL_REVISION, FN_SET_LABEL_DATA, Concatenate(Path("LIN_"), Arg(2)), handle))),
            serialized=True,
        ),
    ]


@functools.cache
def _dimm_methods(family: str, labels: bool) -> RawAml:
    """A DIMM's `_DSM` and (with a label area) label methods, encoded once per kind.

    They take the handle from the device's own `_ADR` (found by the namespace search
    from inside the method), so every DIMM of a family shares the same bytes. A DIMM
    without a label area gets no `_LSx`: Linux takes `_LSI`'s presence as "labels
    readable" and fails the DIMM's probe (-EIO) when `_LSI` then reports no area.
    """
    handle = Path("_ADR")
    label_methods = _label_methods(handle) if labels else []
    return RawAml(definition_block_body(_dsm_method((family, handle)), *label_methods))


def dimm_device(dimm: Dimm) -> Device:
    """NVxx: `_ADR` = NFIT handle, the family `_DSM`, and the label methods."""
    return Device(
        device_name(dimm.slot), Name("_ADR", nfit_handle(dimm.slot)), _dimm_methods(str(dimm.family), dimm.labels)
    )


def nvdr_terms(dimms: Iterable[Dimm], dsm: DsmPage) -> tuple[Term, ...]:
    """The contents of Device(NVDR); NEVT (`acpi.events`) reads the event register."""
    dimms = list(dimms)
    events = nevt_method((d.slot for d in dimms), readable=dsm.doorbell is None)
    return (
        Name("_HID", String(ROOT_HID)),
        *_static_objects(dsm),
        _ncal(dsm),
        _ninp(),
        _nsta(),
        _nlsi(),
        _nlsr(),
        _dsm_method((str(ROOT_UUID), page.ROOT_HANDLE), (str(INTEL_BUS_UUID), page.INTEL_BUS_HANDLE)),
        *(dimm_device(d) for d in sorted(dimms, key=lambda d: d.slot)),
        events,
    )


def build_nvdr_body(dimms: Iterable[Dimm], dsm: DsmPage) -> bytes:
    """AML inside Device(NVDR), for hvmloader to wrap (dm-acpi type 1)."""
    return definition_block_body(*nvdr_terms(dimms, dsm))


def build_ssdt(dimms: Iterable[Dimm], dsm: DsmPage, ids: TableIds = TableIds()) -> bytes:
    """A complete SSDT: Scope(\\_SB){Device(NVDR){…}}."""
    body = definition_block_body(Scope("\\_SB_", Device(ROOT_DEVICE, *nvdr_terms(dimms, dsm))))
    return finish_table("SSDT", SSDT_REVISION, body, ids, oem_table_id=SSDT_TABLE_ID)
