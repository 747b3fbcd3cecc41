"""The simulated hvmloader's own ACPI: the SSDT it wraps a device body in, PkgLengths, checksums.

The wrapper is checked against the daemon's `acpi` encoder here as a second derivation (they
are written apart), and disassembled by iasl in tests/integration/daemon/test_hvmloader.py."""

from __future__ import annotations

import pytest

from acpi.aml import Device, RawAml, Scope, definition_block_body, encode_pkg_length
from acpi.table import TableIds, finish_table
from pmemd.sim.hv_ssdt import checksum, device_ssdt, name_seg, pkg_length, table_header, with_checksum

XEN = TableIds(oem_id="Xen", oem_table_id="HVM", oem_revision=0, creator_id="HVML", creator_revision=0)


@pytest.mark.parametrize("body_length", [0, 7, 50, 4000, 70_000])
def test_the_wrapped_device_matches_an_independent_encoder(body_length: int) -> None:
    body = bytes([0x08]) + b"ABCD" + bytes([0x0A, 0x01]) * max(1, body_length // 2)
    expected = finish_table("SSDT", 2, definition_block_body(Scope("\\_SB_", Device("NVDR", RawAml(body)))), XEN)
    assert device_ssdt("NVDR", body) == expected


@pytest.mark.parametrize("content", [0, 62, 63, 4093, 4094, (1 << 20) - 4, (1 << 20) - 3, (1 << 28) - 5])
def test_pkg_lengths_take_the_fewest_bytes(content: int) -> None:
    assert pkg_length(content) == encode_pkg_length(content)


def test_a_package_beyond_28_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        pkg_length(1 << 28)


@pytest.mark.parametrize("name", ["nvdr", "1NVD", "NV", "NV-0"])
def test_a_device_name_that_is_not_a_nameseg_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="NameSeg"):
        name_seg(name)


def test_a_copied_table_sums_to_zero_whatever_checksum_it_came_with() -> None:
    table = bytearray(finish_table("NFIT", 1, bytes(40)))
    table[9] = 0x5A
    fixed = with_checksum(bytes(table))
    assert sum(fixed) % 256 == 0 and checksum(fixed) == fixed[9]
    assert table_header(fixed) == ("NFIT", len(fixed))
