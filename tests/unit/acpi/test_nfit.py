"""The NFIT: structure layouts, construct round trips, `parse_nfit` refusals (iasl's reading of
generated tables is in tests/integration/acpica/test_nfit.py)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from construct import Struct
from hypothesis import given
from hypothesis import strategies as st

from acpi.layout import PM_RANGE_GUID, Dimm
from acpi.nfit import (
    ControlRegion,
    FlushHintAddress,
    MemoryDeviceMap,
    PlatformCapabilities,
    SpaRange,
    build_nfit,
    control_region,
    flush_hint,
    memory_device_map,
    nfit_structures,
    parse_nfit,
    platform_capabilities,
    spa_range,
)
from acpi.table import HEADER_SIZE, finish_table
from pmemd.daemon.tables import dimms
from tests.harness.config import load_example

GiB = 1 << 30
MiB = 1 << 20

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


# --- structure sizes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "size"),
    [(SpaRange, 56), (MemoryDeviceMap, 48), (ControlRegion, 80), (PlatformCapabilities, 16)],
    ids=["spa", "memdev", "dcr", "capabilities"],
)
def test_fixed_structure_sizes(layout: Struct, size: int) -> None:
    assert layout.sizeof() == size


@pytest.mark.parametrize("hints", [1, 2, 7])
def test_flush_hint_structure_is_16_plus_8_per_hint(hints: int) -> None:
    data = FlushHintAddress.build(dict(device_handle=1, hint_addresses=list(range(0, 8 * hints, 8))))
    assert len(data) == 16 + 8 * hints
    assert struct.unpack_from("<HHIH", data) == (6, 16 + 8 * hints, 1, hints)


@pytest.mark.parametrize(
    ("layout", "build", "type_code", "size"),
    [
        (SpaRange, spa_range, 0, 56),
        (MemoryDeviceMap, memory_device_map, 1, 48),
        (ControlRegion, control_region, 4, 80),
    ],
    ids=["spa", "memdev", "dcr"],
)
def test_built_structure_header_states_type_and_length(layout: Struct, build: Any, type_code: int, size: int) -> None:
    data = layout.build(build(Dimm(slot=0, address=4 * GiB, size=GiB)))
    assert len(data) == size
    assert struct.unpack_from("<HH", data) == (type_code, size)


# --- construct round trips ----------------------------------------------------------


def _values(parsed: Any) -> dict[str, Any]:
    """A parsed structure's named fields, without its header or construct's bookkeeping."""
    return {k: (list(v) if k == "hint_addresses" else v) for k, v in parsed.items() if k != "header" and not k.startswith("_")}


spa_values = st.fixed_dictionaries(
    dict(
        range_index=u16, flags=u16, proximity_domain=u32, range_guid=st.binary(min_size=16, max_size=16),
        address=u64, length=u64, memory_mapping=u64,
    )
)
memdev_values = st.fixed_dictionaries(
    dict(
        device_handle=u32, physical_id=u16, region_id=u16, range_index=u16, region_index=u16,
        region_size=u64, region_offset=u64, address=u64, interleave_index=u16, interleave_ways=u16, flags=u16,
    )
)
dcr_values = st.fixed_dictionaries(
    dict(
        region_index=u16, vendor_id=u16, device_id=u16, revision_id=u16, subsystem_vendor_id=u16,
        subsystem_device_id=u16, subsystem_revision_id=u16, valid_fields=u8, manufacturing_location=u8,
        manufacturing_date=u16, serial_number=u32, code=u16, windows=u16, window_size=u64,
        command_offset=u64, command_size=u64, status_offset=u64, status_size=u64, flags=u16,
    )
)
capability_values = st.fixed_dictionaries(dict(highest_capability=u8, capabilities=u32))


@given(spa_values)
def test_spa_range_round_trips(values: dict[str, Any]) -> None:
    assert _values(SpaRange.parse(SpaRange.build(values))) == values


@given(memdev_values)
def test_memory_device_map_round_trips(values: dict[str, Any]) -> None:
    assert _values(MemoryDeviceMap.parse(MemoryDeviceMap.build(values))) == values


@given(dcr_values)
def test_control_region_round_trips(values: dict[str, Any]) -> None:
    assert _values(ControlRegion.parse(ControlRegion.build(values))) == values


@given(device_handle=u32, hints=st.lists(u64, min_size=1, max_size=16))
def test_flush_hint_address_round_trips(device_handle: int, hints: list[int]) -> None:
    parsed = FlushHintAddress.parse(FlushHintAddress.build(dict(device_handle=device_handle, hint_addresses=hints)))
    assert _values(parsed) == dict(device_handle=device_handle, hint_count=len(hints), hint_addresses=hints)
    assert parsed.header.length == 16 + 8 * len(hints)


@given(capability_values)
def test_platform_capabilities_round_trip(values: dict[str, Any]) -> None:
    assert _values(PlatformCapabilities.parse(PlatformCapabilities.build(values))) == values


@st.composite
def dimm_lists(draw: st.DrawFn, max_size: int = 8) -> list[Dimm]:
    """Valid DIMMs: distinct slots, 2 MiB-aligned non-overlapping ranges above 4 GiB."""
    slots = draw(st.lists(st.integers(0, 255), unique=True, max_size=max_size))
    cursor = 4 * GiB
    out = []
    for slot in slots:
        cursor += draw(st.integers(0, 64)) * 2 * MiB
        size = draw(st.integers(1, 4096)) * 2 * MiB
        hint = draw(st.none() | st.integers(0xF0000000 // 8, 0xFBFFEFF8 // 8).map(lambda n: n * 8))
        out.append(Dimm(slot, cursor, size, draw(u32), draw(st.booleans()), draw(u32), hint))
        cursor += size
    return out


persistences = st.sampled_from([None, "cpu", "mem-ctrl"])


def expected_structures(dimm_list: list[Dimm], persistence: str | None) -> list[dict[str, Any]]:
    """What the NFIT must hold, written out from the spec (QEMU's values, linux-nfit.md §2)."""
    out: list[dict[str, Any]] = []
    for d in sorted(dimm_list, key=lambda d: d.slot):
        out.append(dict(
            type=0, range_index=2 * (d.slot + 1), flags=0b10, proximity_domain=d.node,
            range_guid=PM_RANGE_GUID.bytes_le, address=d.address, length=d.size, memory_mapping=0x8008,
        ))
        out.append(dict(
            type=1, device_handle=d.slot + 1, physical_id=0, region_id=0, range_index=2 * (d.slot + 1),
            region_index=2 * (d.slot + 1) + 1, region_size=d.size, region_offset=0, address=0,
            interleave_index=0, interleave_ways=1, flags=0b1000 if d.unarmed else 0,
        ))
        out.append(dict(
            type=4, region_index=2 * (d.slot + 1) + 1, vendor_id=0x8086, device_id=1, revision_id=1,
            subsystem_vendor_id=0, subsystem_device_id=0, subsystem_revision_id=0, valid_fields=0,
            manufacturing_location=0, manufacturing_date=0, serial_number=d.serial, code=0x0301, windows=0,
            window_size=0, command_offset=0, command_size=0, status_offset=0, status_size=0, flags=0,
        ))
        if d.flush_hint is not None:
            out.append(dict(type=6, device_handle=d.slot + 1, hint_count=1, hint_addresses=[d.flush_hint]))
    if persistence is not None:
        out.append(dict(type=7, highest_capability=1, capabilities={"cpu": 3, "mem-ctrl": 2}[persistence]))
    return out


@given(dimm_lists(), persistences)
def test_nfit_round_trips_through_parse_nfit(dimm_list: list[Dimm], persistence: Any) -> None:
    parsed = parse_nfit(build_nfit(dimm_list, persistence))
    assert [{"type": s.header.type, **_values(s)} for s in parsed] == expected_structures(dimm_list, persistence)


@given(dimm_lists(), persistences)
def test_parsed_structures_rebuild_the_same_bytes(dimm_list: list[Dimm], persistence: Any) -> None:
    from acpi.nfit import STRUCTURES

    body = nfit_structures(dimm_list, persistence)
    parsed = parse_nfit(build_nfit(dimm_list, persistence))
    assert b"".join(STRUCTURES[s.header.type].build(s) for s in parsed) == body


@given(dimm_lists(), persistences)
def test_nfit_length_is_40_plus_184_per_dimm_24_per_hint_16_for_capabilities(
    dimm_list: list[Dimm], persistence: Any
) -> None:
    hints = sum(d.flush_hint is not None for d in dimm_list)
    expected = 40 + 184 * len(dimm_list) + 24 * hints + (16 if persistence else 0)
    nfit = build_nfit(dimm_list, persistence)
    assert len(nfit) == expected
    assert sum(nfit) % 256 == 0


@given(dimm_lists())
def test_structures_follow_slot_order_whatever_the_input_order(dimm_list: list[Dimm]) -> None:
    assert build_nfit(list(reversed(dimm_list)), "cpu") == build_nfit(dimm_list, "cpu")


def test_nfit_header_is_signature_nfit_revision_1_then_4_reserved_bytes() -> None:
    nfit = build_nfit([Dimm(0, 4 * GiB, GiB)], None)
    assert nfit[:4] == b"NFIT"
    assert nfit[8] == 1
    assert nfit[HEADER_SIZE : HEADER_SIZE + 4] == bytes(4)


def test_nfit_without_dimms_or_persistence_is_the_bare_preamble() -> None:
    assert parse_nfit(build_nfit([], None)) == []
    assert len(build_nfit([], None)) == 40


@pytest.mark.parametrize(("persistence", "caps"), [("cpu", 0b11), ("mem-ctrl", 0b10)])
def test_capabilities_highest_bit_is_1(persistence: Any, caps: int) -> None:
    assert platform_capabilities(persistence) == dict(highest_capability=1, capabilities=caps)


def test_flush_hint_structure_names_the_dimm_handle() -> None:
    assert flush_hint(Dimm(4, 4 * GiB, GiB, flush_hint=0xF8000000)) == dict(device_handle=5, hint_addresses=[0xF8000000])


# --- parse_nfit refusals ------------------------------------------------------------


def nfit_of(structures: bytes, signature: str = "NFIT") -> bytes:
    """A correctly framed table (right length and checksum) around raw structures."""
    return finish_table(signature, 1, bytes(4) + structures)


def good_spa() -> bytes:
    return SpaRange.build(spa_range(Dimm(0, 4 * GiB, GiB)))


def test_parse_nfit_refuses_another_signature() -> None:
    with pytest.raises(ValueError, match="not an NFIT"):
        parse_nfit(nfit_of(good_spa(), "SSDT"))


def test_parse_nfit_refuses_a_bad_checksum() -> None:
    nfit = bytearray(nfit_of(good_spa()))
    nfit[-1] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        parse_nfit(bytes(nfit))


@pytest.mark.parametrize("type_code", [2, 3, 5, 8, 0xFFFF])
def test_parse_nfit_refuses_an_unknown_structure_type(type_code: int) -> None:
    with pytest.raises(ValueError, match=f"unknown NFIT structure type {type_code} at offset 56"):
        parse_nfit(nfit_of(good_spa() + struct.pack("<HH", type_code, 16) + bytes(12)))


@pytest.mark.parametrize("length", [0, 2, 3])
def test_parse_nfit_refuses_a_length_shorter_than_the_structure_header(length: int) -> None:
    with pytest.raises(ValueError, match=f"bad length {length}"):
        parse_nfit(nfit_of(struct.pack("<HH", 0, length) + good_spa()[4:]))


def test_parse_nfit_refuses_a_length_past_the_table_end() -> None:
    with pytest.raises(ValueError, match="structure type 0 at offset 0 has bad length 57"):
        parse_nfit(nfit_of(struct.pack("<HH", 0, 57) + good_spa()[4:]))


def test_parse_nfit_refuses_a_fixed_structure_with_another_length() -> None:
    """A 64-byte SPA (ACPI 6.4's location cookie) is not what we emit or accept."""
    with pytest.raises(ValueError, match="structure type 0 at offset 0"):
        parse_nfit(nfit_of(struct.pack("<HH", 0, 64) + good_spa()[4:] + bytes(8)))


def test_parse_nfit_refuses_a_flush_hint_length_that_disagrees_with_its_count() -> None:
    fha = bytearray(FlushHintAddress.build(dict(device_handle=1, hint_addresses=[0xF8000000])))
    fha[2:4] = struct.pack("<H", 32)
    with pytest.raises(ValueError, match="structure type 6 at offset 0 has bad length 32"):
        parse_nfit(nfit_of(bytes(fha) + bytes(8)))


def test_parse_nfit_refuses_a_flush_hint_count_past_its_length() -> None:
    fha = bytearray(FlushHintAddress.build(dict(device_handle=1, hint_addresses=[0xF8000000])))
    fha[8:10] = struct.pack("<H", 2)
    with pytest.raises(ValueError, match="structure type 6 at offset 0"):
        parse_nfit(nfit_of(bytes(fha)))


@pytest.mark.parametrize("tail", [1, 2, 3])
def test_parse_nfit_refuses_a_truncated_structure_header(tail: int) -> None:
    with pytest.raises(ValueError, match="truncated structure header at offset 56"):
        parse_nfit(nfit_of(good_spa() + bytes([1, 0, 48])[:tail]))


def test_parse_nfit_refuses_a_truncated_structure() -> None:
    with pytest.raises(ValueError, match="bad length 56"):
        parse_nfit(nfit_of(good_spa()[:40]))


def test_parse_nfit_refuses_a_table_without_its_reserved_field() -> None:
    with pytest.raises(ValueError, match="reserved bytes are missing"):
        parse_nfit(finish_table("NFIT", 1, b"\0\0"))


def test_tables_describe_guest_pmem_without_the_label_area() -> None:
    cfg = load_example("multi.toml")
    assert [d.size for d in dimms(cfg)] == [d.size - d.label_size for d in cfg.nvdimms]
