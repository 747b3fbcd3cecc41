"""The NVDIMM Firmware Interface Table (ACPI 6.5 §5.2.26).

Per DIMM: an SPA range (type 0), a memory-device map (type 1), a control region
(type 4) and, when configured, a flush hint address (type 6); once per table, the
platform capabilities (type 7) when a persistence domain is configured. Values are what
Linux's nfit driver needs (see ../shared/reference/linux-nfit.md): range indexes ≠ 0,
every memdev pointing at an existing control region, stable serials. Memdev flags come from
the DIMM (`Dimm.memdev_flags`); a map-failed DIMM gets no SPA range and its memdev names
range index 0, as platform firmware describes a DIMM it could not map (Linux then registers
the DIMM, shows `map_fail`, and builds no region on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Rebuild,
    Struct,
    len_,
    this,
)

from acpi.layout import PM_RANGE_GUID, Dimm, Persistence, dcr_index, nfit_handle, spa_index
from acpi.table import TableIds, finish_table, parse_table

NFIT_REVISION = 1

TYPE_SPA = 0
TYPE_MEMDEV = 1
TYPE_DCR = 4
TYPE_FLUSH_HINT = 6
TYPE_CAPABILITIES = 7


def _fixed(type_code: int, *fields: Any) -> Struct:
    """A fixed-size NFIT structure whose length field is its declared size."""
    size = 4 + Struct(*fields).sizeof()
    header = Struct("type" / Const(type_code, Int16ul), "length" / Const(size, Int16ul))
    return Struct("header" / header, *fields)


SpaRange = _fixed(
    TYPE_SPA,
    "range_index" / Int16ul,
    "flags" / Int16ul,
    Padding(4),
    "proximity_domain" / Int32ul,
    "range_guid" / Bytes(16),
    "address" / Int64ul,
    "length" / Int64ul,
    "memory_mapping" / Int64ul,
)
"""Type 0, 56 bytes (Table 5.149). Flags bit 1: proximity domain valid."""

MemoryDeviceMap = _fixed(
    TYPE_MEMDEV,
    "device_handle" / Int32ul,
    "physical_id" / Int16ul,
    "region_id" / Int16ul,
    "range_index" / Int16ul,
    "region_index" / Int16ul,
    "region_size" / Int64ul,
    "region_offset" / Int64ul,
    "address" / Int64ul,
    "interleave_index" / Int16ul,
    "interleave_ways" / Int16ul,
    "flags" / Int16ul,
    Padding(2),
)
"""Type 1, 48 bytes (Table 5.151). Flags bit 3: not armed."""

ControlRegion = _fixed(
    TYPE_DCR,
    "region_index" / Int16ul,
    "vendor_id" / Int16ul,
    "device_id" / Int16ul,
    "revision_id" / Int16ul,
    "subsystem_vendor_id" / Int16ul,
    "subsystem_device_id" / Int16ul,
    "subsystem_revision_id" / Int16ul,
    "valid_fields" / Int8ul,
    "manufacturing_location" / Int8ul,
    "manufacturing_date" / Int16ul,
    Padding(2),
    "serial_number" / Int32ul,
    "code" / Int16ul,
    "windows" / Int16ul,
    "window_size" / Int64ul,
    "command_offset" / Int64ul,
    "command_size" / Int64ul,
    "status_offset" / Int64ul,
    "status_size" / Int64ul,
    "flags" / Int16ul,
    Padding(6),
)
"""Type 4, 80 bytes (Table 5.154). No block windows: byte-addressable PMEM only."""

FlushHintAddress = Struct(
    "header"
    / Struct(
        "type" / Const(TYPE_FLUSH_HINT, Int16ul),
        "length" / Rebuild(Int16ul, lambda ctx: 16 + 8 * len(ctx._.hint_addresses)),
    ),
    "device_handle" / Int32ul,
    "hint_count" / Rebuild(Int16ul, len_(this.hint_addresses)),
    Padding(6),
    "hint_addresses" / Array(this.hint_count, Int64ul),
)
"""Type 6, 16 + 8·n bytes (Table 5.158): n ≥ 1 8-byte MMIO registers a flush writes to."""

PlatformCapabilities = _fixed(
    TYPE_CAPABILITIES,
    "highest_capability" / Int8ul,
    Padding(3),
    "capabilities" / Int32ul,
    Padding(4),
)
"""Type 7, 16 bytes (Table 5.159). Bit 0 CPU cache flush, bit 1 memory controller flush."""

STRUCTURES = {
    TYPE_SPA: SpaRange,
    TYPE_MEMDEV: MemoryDeviceMap,
    TYPE_DCR: ControlRegion,
    TYPE_FLUSH_HINT: FlushHintAddress,
    TYPE_CAPABILITIES: PlatformCapabilities,
}

SPA_FLAG_PROXIMITY_VALID = 1 << 1
MEMORY_MAPPING_WB_NV = 0x8 | 0x8000  # EFI_MEMORY_WB | EFI_MEMORY_NV
FORMAT_BYTE_ADDRESSABLE = 0x0301  # byte-addressable, no energy source
VENDOR_INTEL = 0x8086
CAPABILITIES = {"cpu": 0b11, "mem-ctrl": 0b10}


def spa_range(d: Dimm) -> dict:
    return dict(
        range_index=spa_index(d.slot),
        flags=SPA_FLAG_PROXIMITY_VALID,
        proximity_domain=d.node,
        range_guid=PM_RANGE_GUID.bytes_le,
        address=d.address,
        length=d.size,
        memory_mapping=MEMORY_MAPPING_WB_NV,
    )


def memory_device_map(d: Dimm) -> dict:
    return dict(
        device_handle=nfit_handle(d.slot),
        physical_id=0,
        region_id=0,
        range_index=0 if d.map_failed else spa_index(d.slot),
        region_index=dcr_index(d.slot),
        region_size=d.size,
        region_offset=0,
        address=0,
        interleave_index=0,
        interleave_ways=1,
        flags=d.memdev_flags,
    )


def control_region(d: Dimm) -> dict:
    return dict(
        region_index=dcr_index(d.slot),
        vendor_id=VENDOR_INTEL,
        device_id=0x0001,
        revision_id=0x0001,
        subsystem_vendor_id=0,
        subsystem_device_id=0,
        subsystem_revision_id=0,
        valid_fields=0,
        manufacturing_location=0,
        manufacturing_date=0,
        serial_number=d.serial,
        code=FORMAT_BYTE_ADDRESSABLE,
        windows=0,
        window_size=0,
        command_offset=0,
        command_size=0,
        status_offset=0,
        status_size=0,
        flags=0,
    )


def flush_hint(d: Dimm) -> dict:
    return dict(device_handle=nfit_handle(d.slot), hint_addresses=[d.flush_hint])


def platform_capabilities(persistence: Persistence) -> dict:
    caps = CAPABILITIES[persistence]
    return dict(highest_capability=caps.bit_length() - 1, capabilities=caps)


# Compiled builders for the fixed structures: the values come from a validated config,
# not from a guest, and compilation makes building 256 DIMMs' NFIT ~4x faster
# (bench/acpi_build.py). Parsing keeps the interpreted declarations.
_COMPILED = {layout: layout.compile() for layout in (SpaRange, MemoryDeviceMap, ControlRegion, PlatformCapabilities)}


def _build(layout: Struct, values: dict) -> bytes:
    return _COMPILED[layout].build(dict(header={}, **values))


def nfit_structures(dimms: Iterable[Dimm], persistence: Persistence | None) -> bytes:
    """The NFIT's structures without the table header: also what `_FIT` would return."""
    out = bytearray()
    for d in sorted(dimms, key=lambda d: d.slot):
        if not d.map_failed:
            out += _build(SpaRange, spa_range(d))
        out += _build(MemoryDeviceMap, memory_device_map(d))
        out += _build(ControlRegion, control_region(d))
        if d.flush_hint is not None:
            out += FlushHintAddress.build(flush_hint(d))
    if persistence is not None:
        out += _build(PlatformCapabilities, platform_capabilities(persistence))
    return bytes(out)


def build_nfit(dimms: Iterable[Dimm], persistence: Persistence | None, ids: TableIds = TableIds()) -> bytes:
    """A complete NFIT: header, 4 reserved bytes, then the structures."""
    return finish_table("NFIT", NFIT_REVISION, bytes(4) + nfit_structures(dimms, persistence), ids)


def parse_nfit(data: bytes) -> list[Any]:
    """Parse a complete NFIT into its structures (each a construct Container with `header.type`).

    Raises ValueError on a bad header, an unknown structure type or a length that
    disagrees with the structure's layout.
    """
    table = parse_table(data)
    if table.header.signature != "NFIT":
        raise ValueError(f"not an NFIT: signature {table.header.signature!r}")
    if len(table.body) < 4:
        raise ValueError(f"NFIT of {len(data)} bytes is truncated: its 4 reserved bytes are missing")
    body = table.body[4:]
    structures = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < 4:
            raise ValueError(f"truncated structure header at offset {pos}")
        type_code = Int16ul.parse(body[pos : pos + 2])
        length = Int16ul.parse(body[pos + 2 : pos + 4])
        layout = STRUCTURES.get(type_code)
        if layout is None:
            raise ValueError(f"unknown NFIT structure type {type_code} at offset {pos}")
        if length < 4 or pos + length > len(body):
            raise ValueError(f"structure type {type_code} at offset {pos} has bad length {length}")
        try:
            structure = layout.parse(body[pos : pos + length])
        except ConstructError as e:
            raise ValueError(f"structure type {type_code} at offset {pos}: {e}") from None
        if len(layout.build(structure)) != length:
            raise ValueError(f"structure type {type_code} at offset {pos} has bad length {length}")
        structures.append(structure)
        pos += length
    return structures
