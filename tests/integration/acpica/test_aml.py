"""The AML encoder, term by term against iasl: the ASL in the test, iasl's bytes as the truth.

Each fixture pairs an ASL snippet with the same program built through acpi.aml. The
expected bytes are produced by compiling the snippet with iasl when the test runs, never
typed by hand. (The encoder's own rules are in tests/unit/acpi/test_aml.py.)
"""

from __future__ import annotations

import pathlib

import pytest

from acpi.aml import (
    BYTE_ACC,
    DWORD_ACC,
    PRESERVE,
    QWORD_ACC,
    SYSTEM_IO,
    SYSTEM_MEMORY,
    WRITE_AS_ONES,
    WRITE_AS_ZEROS,
    Add,
    And,
    Arg,
    Break,
    Buffer,
    Call,
    Concatenate,
    CreateDWordField,
    CreateField,
    CreateQWordField,
    DerefOf,
    Device,
    Else,
    Field,
    FieldUnit,
    If,
    Index,
    LAnd,
    LEqual,
    LGreater,
    LGreaterEqual,
    LLess,
    LLessEqual,
    LNot,
    LNotEqual,
    Local,
    LOr,
    Method,
    Mid,
    Name,
    Notify,
    ObjectType,
    OperationRegion,
    Or,
    Package,
    Path,
    Return,
    Scope,
    ShiftLeft,
    ShiftRight,
    SizeOf,
    Store,
    String,
    Subtract,
    ToBuffer,
    Uuid,
    While,
    definition_block_body,
)
from tests.harness.acpica import compile_aml_body

FIXTURES = {
    "integers": (
        "Name (INT0, Zero) Name (INT1, One) Name (INT2, 0x12) Name (INT3, 0x1234)"
        " Name (INT4, 0x12345678) Name (INT5, 0x123456789A)",
        [Name("INT0", 0), Name("INT1", 1), Name("INT2", 0x12), Name("INT3", 0x1234),
         Name("INT4", 0x12345678), Name("INT5", 0x123456789A)],
    ),
    "string": ('Name (_HID, "ACPI0012")', [Name("_HID", String("ACPI0012"))]),
    "buffers": (
        "Name (BUF0, Buffer (0x04) {0x01, 0x02, 0x03, 0x04}) Name (BUF1, Buffer (0x10) {})",
        [Name("BUF0", Buffer(b"\x01\x02\x03\x04")), Name("BUF1", Buffer(size=16))],
    ),
    "uuid": (
        'Name (UUI0, ToUUID ("4309ac30-0d11-11e4-9191-0800200c9a66"))',
        [Name("UUI0", Uuid("4309ac30-0d11-11e4-9191-0800200c9a66"))],
    ),
    "package": (
        "Name (PKG0, Package (0x03) {Zero, One, Buffer (One) {0x00}})",
        [Name("PKG0", Package(0, 1, Buffer(b"\x00")))],
    ),
    "device_in_scope": (
        "Scope (\\_SB) { Device (NVDR) { Name (_HID, \"ACPI0012\") Device (NV00) { Name (_ADR, One) } } }",
        [Scope("\\_SB_", Device("NVDR", Name("_HID", String("ACPI0012")), Device("NV00", Name("_ADR", 1))))],
    ),
    "method_logic": (
        "Method (MTH0, 2, Serialized) {"
        " If (LAnd (LEqual (Arg0, One), LOr (LLess (Arg1, 0x10), LGreater (Arg1, 0x20))))"
        " { Return (One) } Else { Return (Zero) } }",
        [Method("MTH0", 2,
                If(LAnd(LEqual(Arg(0), 1), LOr(LLess(Arg(1), 0x10), LGreater(Arg(1), 0x20))), Return(1)),
                Else(Return(0)), serialized=True)],
    ),
    "negated_comparisons": (
        "Method (MTH1, 1) { If (LNotEqual (Arg0, 0x05)) { Return (One) }"
        " If (LLessEqual (Arg0, 0x06)) { Return (0x02) } If (LGreaterEqual (Arg0, 0x07)) { Return (0x03) }"
        " Return (LNot (Arg0)) }",
        [Method("MTH1", 1, If(LNotEqual(Arg(0), 5), Return(1)), If(LLessEqual(Arg(0), 6), Return(2)),
                If(LGreaterEqual(Arg(0), 7), Return(3)), Return(LNot(Arg(0))))],
    ),
    "arithmetic": (
        "Method (MTH2, 2) { Store (Add (Arg0, 0x07), Local0) Store (Subtract (Local0, One), Local1)"
        " Store (ShiftRight (ShiftLeft (Local1, 0x04), 0x02), Local2) Store (And (Local2, 0xFF), Local3)"
        " Or (Local3, Arg1, Local4) Return (Local4) }",
        [Method("MTH2", 2, Store(Add(Arg(0), 7), Local(0)), Store(Subtract(Local(0), 1), Local(1)),
                Store(ShiftRight(ShiftLeft(Local(1), 4), 2), Local(2)), Store(And(Local(2), 0xFF), Local(3)),
                Or(Local(3), Arg(1), Local(4)), Return(Local(4)))],
    ),
    "buffers_and_objects": (
        "Method (MTH3, 1, Serialized) { Name (BUF2, Buffer (0x08) {})"
        " CreateDWordField (BUF2, 0x04, DW00) CreateQWordField (BUF2, Zero, QW00)"
        " CreateField (BUF2, 0x08, 0x10, FLD0) Store (SizeOf (Arg0), Local0)"
        " Store (ObjectType (Arg0), Local1) Store (DerefOf (Index (Arg0, Zero)), Local2)"
        " Store (Mid (Arg0, One, 0x02), Local3) Concatenate (Local3, ToBuffer (DW00), Local4)"
        " Return (Local4) }",
        [Method("MTH3", 1, Name("BUF2", Buffer(size=8)), CreateDWordField(Path("BUF2"), 4, "DW00"),
                CreateQWordField(Path("BUF2"), 0, "QW00"), CreateField(Path("BUF2"), 8, 16, "FLD0"),
                Store(SizeOf(Arg(0)), Local(0)), Store(ObjectType(Arg(0)), Local(1)),
                Store(DerefOf(Index(Arg(0), 0)), Local(2)), Store(Mid(Arg(0), 1, 2), Local(3)),
                Concatenate(Local(3), ToBuffer(Path("DW00")), Local(4)), Return(Local(4)), serialized=True)],
    ),
    "regions_and_fields": (
        "OperationRegion (REG0, SystemMemory, 0xFBFFF000, 0x1000)"
        " Field (REG0, QWordAcc, NoLock, WriteAsZeros) { HDR0, 128, , 64, RHD0, 64 }"
        " Field (REG0, ByteAcc, NoLock, WriteAsOnes) { Offset (0x100), BYT0, 8 }"
        " OperationRegion (REG1, SystemIO, 0x0A18, 0x04)"
        " Field (REG1, DWordAcc, NoLock, Preserve) { NTFY, 32 }",
        [OperationRegion("REG0", SYSTEM_MEMORY, 0xFBFFF000, 0x1000),
         Field("REG0", FieldUnit("HDR0", 128), FieldUnit(None, 64), FieldUnit("RHD0", 64),
               access=QWORD_ACC, update=WRITE_AS_ZEROS),
         Field("REG0", FieldUnit(None, 0x800), FieldUnit("BYT0", 8), access=BYTE_ACC, update=WRITE_AS_ONES),
         OperationRegion("REG1", SYSTEM_IO, 0x0A18, 4),
         Field("REG1", FieldUnit("NTFY", 32), access=DWORD_ACC, update=PRESERVE)],
    ),
    "dynamic_region_in_method": (
        "Method (MTH4, 1, Serialized) { OperationRegion (RDYN, SystemMemory, Add (0xFBFFF010, Arg0), 0x0800)"
        " Field (RDYN, QWordAcc, NoLock, WriteAsZeros) { BIG0, 16384 } Store (Zero, BIG0) }",
        [Method("MTH4", 1, OperationRegion("RDYN", SYSTEM_MEMORY, Add(0xFBFFF010, Arg(0)), 0x800),
                Field("RDYN", FieldUnit("BIG0", 16384), access=QWORD_ACC, update=WRITE_AS_ZEROS),
                Store(0, Path("BIG0")), serialized=True)],
    ),
    "while_break_call_notify": (
        "Device (DEV0) { Method (MTH5, 1) { Return (Arg0) }"
        " Method (MTH6, 0) { While (One) { If (MTH5 (Zero)) { Break } Notify (DEV0, 0x81) Break } } }",
        [Device("DEV0", Method("MTH5", 1, Return(Arg(0))),
                Method("MTH6", 0, While(1, If(Call("MTH5", 0), Break()), Notify("DEV0", 0x81), Break())))],
    ),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_term_encodes_as_iasl_compiles_its_asl(name: str, tmp_path: pathlib.Path) -> None:
    asl, terms = FIXTURES[name]
    assert definition_block_body(*terms) == compile_aml_body(asl, tmp_path)
