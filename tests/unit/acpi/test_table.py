"""ACPI table framing: the 36-byte header, its length and checksum, and `parse_table`'s refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acpi.table import HEADER_SIZE, TableHeader, TableIds, checksum, finish_table, parse_table

ascii_id = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


def test_header_is_36_bytes() -> None:
    assert HEADER_SIZE == TableHeader.sizeof() == 36


def test_header_fields_sit_at_their_acpi_offsets() -> None:
    ids = TableIds("OEMID1", "TABLEID8", 0x01020304, "CRTR", 0x05060708)
    table = finish_table("TEST", 7, b"body", ids)
    assert struct.unpack_from("<4sIBB6s8sI4sI", table) == (
        b"TEST", 40, 7, table[9], b"OEMID1", b"TABLEID8", 0x01020304, b"CRTR", 0x05060708,
    )
    assert table[HEADER_SIZE:] == b"body"


def test_short_ids_are_padded_with_nul_bytes() -> None:
    table = finish_table("TEST", 1, b"")
    assert table[10:16] == b"PMEMD\0"
    assert table[16:24] == b"PMEMD\0\0\0"


def test_oem_table_id_can_be_overridden_per_table() -> None:
    assert finish_table("SSDT", 2, b"", oem_table_id="NVDIMM")[16:24] == b"NVDIMM\0\0"


@given(body=st.binary(max_size=512), revision=st.integers(0, 255))
def test_length_field_is_the_table_length(body: bytes, revision: int) -> None:
    table = finish_table("TEST", revision, body)
    assert struct.unpack_from("<I", table, 4)[0] == len(table) == HEADER_SIZE + len(body)


@given(
    body=st.binary(max_size=512),
    oem_id=ascii_id.filter(lambda s: len(s) <= 6),
    creator_revision=st.integers(0, 0xFFFFFFFF),
)
def test_table_bytes_sum_to_zero(body: bytes, oem_id: str, creator_revision: int) -> None:
    table = finish_table("TEST", 1, body, TableIds(oem_id=oem_id, creator_revision=creator_revision))
    assert sum(table) % 256 == 0


@given(st.binary())
def test_checksum_byte_makes_the_sum_zero(data: bytes) -> None:
    assert (sum(data) + checksum(data)) % 256 == 0


@pytest.mark.parametrize("signature", ["NFI", "NFITX", ""])
def test_signature_other_than_4_characters_is_refused(signature: str) -> None:
    with pytest.raises(ValueError, match="signature must be 4 characters"):
        finish_table(signature, 1, b"")


@given(body=st.binary(max_size=256))
def test_parse_table_round_trips(body: bytes) -> None:
    table = parse_table(finish_table("TEST", 3, body))
    assert table.header.signature == "TEST"
    assert table.header.revision == 3
    assert table.header.length == HEADER_SIZE + len(body)
    assert table.header.oem_id == "PMEMD"
    assert table.body == body


def test_parse_table_refuses_data_shorter_than_a_header() -> None:
    with pytest.raises(ValueError, match="shorter than its header"):
        parse_table(finish_table("TEST", 1, b"")[:35])


def test_parse_table_refuses_trailing_bytes() -> None:
    with pytest.raises(ValueError, match="length field 40 != 41 bytes"):
        parse_table(finish_table("TEST", 1, b"body") + b"\0")


def test_parse_table_refuses_a_truncated_table() -> None:
    with pytest.raises(ValueError, match="length field 40 != 39 bytes"):
        parse_table(finish_table("TEST", 1, b"body")[:-1])


def test_parse_table_refuses_a_wrong_checksum() -> None:
    table = bytearray(finish_table("TEST", 1, b"body"))
    table[9] ^= 0x01
    with pytest.raises(ValueError, match="checksum"):
        parse_table(bytes(table))


def test_parse_table_refuses_a_corrupted_body() -> None:
    table = bytearray(finish_table("TEST", 1, b"body"))
    table[-1] ^= 0x80
    with pytest.raises(ValueError, match="checksum"):
        parse_table(bytes(table))
