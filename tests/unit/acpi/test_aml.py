"""The AML encoder's own rules: package and field lengths, name strings, integer encodings, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acpi.aml import Integer, Name, Path, decode_pkg_length, encode_pkg_length


@pytest.mark.parametrize(
    "length, encoded",
    [
        (0, b"\x01"),
        (62, b"\x3f"),  # 62 + 1 byte of PkgLength = 63: the last one-byte value
        (63, b"\x41\x04"),  # 63 + 2 = 65 = 0x41: the first two-byte value
        (4093, b"\x4f\xff"),  # 4093 + 2 = 4095: the last two-byte value
        (4093 + 1, b"\x81\x00\x01"),  # 4094 + 3 = 4097 = 0x1001: three bytes
        ((1 << 20) - 4, b"\x8f\xff\xff"),  # 2**20 - 1: the last three-byte value
        ((1 << 20) - 3, b"\xc1\x00\x00\x01"),  # 2**20 - 3 + 4 = 2**20 + 1: four bytes
    ],
)
def test_pkg_length_counts_itself_at_every_encoding_boundary(length: int, encoded: bytes) -> None:
    assert encode_pkg_length(length) == encoded


@pytest.mark.parametrize(
    "width, encoded",
    [(63, b"\x3f"), (64, b"\x40\x04"), (4095, b"\x4f\xff"), (4096, b"\x80\x00\x01"),
     ((1 << 20) - 1, b"\x8f\xff\xff"), (1 << 20, b"\xc0\x00\x00\x01")],
)
def test_field_width_does_not_count_itself(width: int, encoded: bytes) -> None:
    assert encode_pkg_length(width, includes_self=False) == encoded


def test_pkg_length_beyond_28_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_pkg_length(1 << 28)


@given(st.integers(min_value=0, max_value=(1 << 28) - 1))
def test_decoding_a_field_width_returns_it(width: int) -> None:
    encoded = encode_pkg_length(width, includes_self=False)
    assert decode_pkg_length(encoded + b"\xaa") == (width, len(encoded))


@given(st.integers(min_value=0, max_value=(1 << 28) - 5))
def test_decoding_a_block_length_counts_the_length_bytes(length: int) -> None:
    encoded = encode_pkg_length(length)
    assert decode_pkg_length(encoded) == (length + len(encoded), len(encoded))


@pytest.mark.parametrize("bad", ["NV0", "NV000", "nv00", "0NV0", "N-00", "\\_SB_.NV", "_SB_..NV00"])
def test_invalid_name_segment_is_rejected_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid AML name segment"):
        Path(bad)


@pytest.mark.parametrize(
    "path, encoded",
    [("NV00", b"NV00"), ("\\_SB_", b"\\_SB_"), ("\\_SB_.NVDR", b"\\\x2e_SB_NVDR"),
     ("\\_SB_.NVDR.NV00", b"\\\x2f\x03_SB_NVDRNV00"), ("^NCAL", b"^NCAL"), ("", b"\x00")],
)
def test_name_strings_use_the_right_prefix(path: str, encoded: bytes) -> None:
    assert Path(path).encode() == encoded


@pytest.mark.parametrize("value, encoded", [(0, b"\x00"), (1, b"\x01"), (2, b"\x0a\x02"), (0x100, b"\x0b\x00\x01"),
                                            (0x10000, b"\x0c\x00\x00\x01\x00"), (1 << 32, b"\x0e" + (1 << 32).to_bytes(8, "little"))])  # noqa: E501
def test_integers_take_their_shortest_encoding(value: int, encoded: bytes) -> None:
    assert Integer(value).encode() == encoded


def test_negative_integer_is_refused() -> None:
    with pytest.raises(ValueError):
        Integer(-1).encode()


def test_bool_is_not_an_integer() -> None:
    with pytest.raises(TypeError):
        Name("FLAG", True).encode()  # type: ignore[arg-type]
