"""ACPI.bin, the file for xl's `acpi_firmware=`: the NFIT and SSDT back to back, each table intact."""

from __future__ import annotations

import pytest

from acpi.table import parse_tables
from pmemd import config
from pmemd.daemon.tables import build_tables

CFG = {"domid": 3, "guest": {"lowmem": "256M"},
       "nvdimm": [{"backing": "/tmp/nv0.img", "size": "34M", "label_size": "2M", "flush_hint": 0xFBFFE000}]}


def test_acpi_firmware_is_the_nfit_then_the_ssdt() -> None:
    tables = build_tables(config.from_mapping(CFG))
    assert tables.acpi_firmware == tables.nfit + tables.ssdt
    assert [t.header.signature for t in parse_tables(tables.acpi_firmware)] == ["NFIT", "SSDT"]


def test_a_truncated_blob_is_refused() -> None:
    blob = build_tables(config.from_mapping(CFG)).acpi_firmware
    with pytest.raises(ValueError):
        parse_tables(blob[:-1])
