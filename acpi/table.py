"""ACPI system description table framing: the 36-byte header and its checksum.

ACPI 6.5 §5.2.6: every table starts with Signature, Length, Revision, Checksum, OEM ID,
OEM Table ID, OEM Revision, Creator ID and Creator Revision, and the bytes of the whole
table sum to zero modulo 256. `finish_table` is the only place a header is written: it
measures the body, so no table ever carries a hand-typed length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from construct import Bytes, Int8ul, Int32ul, PaddedString, Struct

HEADER_SIZE = 36

TableHeader = Struct(
    "signature" / PaddedString(4, "ascii"),
    "length" / Int32ul,
    "revision" / Int8ul,
    "checksum" / Int8ul,
    "oem_id" / PaddedString(6, "ascii"),
    "oem_table_id" / PaddedString(8, "ascii"),
    "oem_revision" / Int32ul,
    "creator_id" / PaddedString(4, "ascii"),
    "creator_revision" / Int32ul,
)
"""ACPI 6.5 §5.2.6 Table 5.4. Short IDs are padded with NUL bytes."""

assert TableHeader.sizeof() == HEADER_SIZE

Table = Struct(
    "header" / TableHeader,
    "body" / Bytes(lambda ctx: ctx.header.length - HEADER_SIZE),
)


@dataclass(frozen=True)
class TableIds:
    """Who built a table: the OEM and creator fields of its header."""

    oem_id: str = "PMEMD"
    oem_table_id: str = "PMEMD"
    oem_revision: int = 1
    creator_id: str = "PMEM"
    creator_revision: int = 1


def checksum(data: bytes) -> int:
    """The byte that makes `data` sum to zero modulo 256 (with the checksum byte zeroed)."""
    return (-sum(data)) & 0xFF


def finish_table(
    signature: str,
    revision: int,
    body: bytes,
    ids: TableIds = TableIds(),
    *,
    oem_table_id: str | None = None,
) -> bytes:
    """Frame `body` with a header whose length and checksum describe the whole table."""
    if len(signature) != 4:
        raise ValueError(f"table signature must be 4 characters, got {signature!r}")
    header = dict(
        signature=signature,
        length=HEADER_SIZE + len(body),
        revision=revision,
        checksum=0,
        oem_id=ids.oem_id,
        oem_table_id=oem_table_id if oem_table_id is not None else ids.oem_table_id,
        oem_revision=ids.oem_revision,
        creator_id=ids.creator_id,
        creator_revision=ids.creator_revision,
    )
    raw = TableHeader.build(header) + body
    header["checksum"] = checksum(raw)
    return TableHeader.build(header) + body


def parse_table(data: bytes) -> Any:
    """Parse a framed table; raises ValueError when its length or checksum is wrong."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"table is {len(data)} bytes, shorter than its header")
    header = TableHeader.parse(data)
    if header.length != len(data):
        raise ValueError(f"table length field {header.length} != {len(data)} bytes")
    if sum(data) & 0xFF:
        raise ValueError("table checksum does not sum to zero")
    return Table.parse(data)


def parse_tables(blob: bytes) -> list[Any]:
    """Parse tables stored back to back (xl's `acpi_firmware=` file), each by its length field."""
    tables, offset = [], 0
    while offset < len(blob):
        if len(blob) - offset < HEADER_SIZE:
            raise ValueError(f"{len(blob) - offset} trailing bytes at {offset} are shorter than a header")
        length = TableHeader.parse(blob[offset:]).length
        if length < HEADER_SIZE:
            raise ValueError(f"table at {offset} has length {length}, shorter than its header")
        tables.append(parse_table(blob[offset : offset + length]))
        offset += length
    return tables


__all__ = ["HEADER_SIZE", "TableHeader", "TableIds", "checksum", "finish_table", "parse_table", "parse_tables"]
