"""iasl's reading of the NFIT we build.

The tests decode generated tables with ACPICA, parse the "[offset] Field : value"
lines into records and compare every value Linux relies on with the config it came
from (handles slot+1, SPA index 2(slot+1), DCR index 2(slot+1)+1, serials, nodes,
the not-armed flag, flush hints, platform capabilities).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acpi.layout import PM_RANGE_GUID, Dimm
from acpi.nfit import build_nfit
from acpi.table import HEADER_SIZE
from pmemd import config
from pmemd.config import Config
from pmemd.daemon.tables import build_tables
from tests.harness.acpica import AcpicaError, Field, compile_asl, decompile, fields, parse_data_table
from tests.harness.config import load_example

GiB = 1 << 30
MiB = 1 << 20


def decoded(nfit: bytes, tmp_path: Path) -> tuple[dict[str, Field], list[dict[str, Field]], list[list[Field]]]:
    """iasl's header fields, and each subtable both by name and as its raw field list."""
    header, subtables = parse_data_table(decompile(nfit, tmp_path, "nfit"))
    return fields(header), [fields(s) for s in subtables], subtables


def of_type(records: list[dict[str, Field]], type_code: int) -> list[dict[str, Field]]:
    return [r for r in records if r["Subtable Type"].int == type_code]


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, bytes, list[dict[str, Field]]]:
    """configs/multi.toml: slots 0, 1, 3; slot 3 unarmed; slot 0 with a flush hint; mem-ctrl."""
    cfg = load_example("multi.toml")
    nfit = build_tables(cfg).nfit
    _, records, _ = decoded(nfit, tmp_path_factory.mktemp("iasl"))
    return cfg, nfit, records


def by_slot(cfg: Config) -> list[config.NvdimmConfig]:
    return sorted(cfg.nvdimms, key=lambda d: d.slot)


def test_iasl_decodes_the_nfit_with_no_errors_or_warnings(tmp_path: Path) -> None:
    nfit = build_tables(load_example("multi.toml")).nfit
    header, records, _ = decoded(nfit, tmp_path)
    assert header["Signature"].value.startswith('"NFIT"')
    assert header["Table Length"].int == len(nfit)
    assert header["Revision"].int == 1
    assert header["Oem ID"].value == '"PMEMD"'
    assert header["Reserved"].int == 0
    assert len(records) == 3 * 3 + 1 + 1


def test_iasl_sees_structures_in_slot_order(multi: Any) -> None:
    _, _, records = multi
    assert [r["Subtable Type"].int for r in records] == [0, 1, 4, 6, 0, 1, 4, 0, 1, 4, 7]


def test_iasl_sees_each_structure_length(multi: Any) -> None:
    _, _, records = multi
    lengths = {r["Subtable Type"].int: r["Length"].int for r in records}
    assert lengths == {0: 56, 1: 48, 4: 80, 6: 24, 7: 16}


def test_iasl_sees_spa_ranges_at_the_configured_bases_lengths_and_nodes(multi: Any) -> None:
    cfg, _, records = multi
    seen = [
        (r["Range Index"].int, r["Address Range Base"].int, r["Address Range Length"].int,
         r["Proximity Domain"].int, r["Proximity Domain Valid"].int, r["Region Type GUID"].value,
         r["Memory Map Attribute"].int)
        for r in of_type(records, 0)
    ]
    assert seen == [
        (2 * (d.slot + 1), d.address, d.pmem_size, d.node, 1, str(PM_RANGE_GUID).upper(), 0x8008)
        for d in by_slot(cfg)
    ]
    assert [s[1:3] for s in seen] == [(18 * GiB, 4 * GiB), (16 * GiB, 2 * GiB), (22 * GiB, 512 * MiB)]


def test_iasl_sees_memdev_handles_and_indexes_from_the_slot(multi: Any) -> None:
    cfg, _, records = multi
    seen = [
        (r["Device Handle"].int, r["Range Index"].int, r["Control Region Index"].int, r["Region Size"].int,
         r["Region Offset"].int, r["Address Region Base"].int, r["Interleave Ways"].int)
        for r in of_type(records, 1)
    ]
    assert seen == [(d.slot + 1, 2 * (d.slot + 1), 2 * (d.slot + 1) + 1, d.pmem_size, 0, 0, 1) for d in by_slot(cfg)]
    assert [s[:3] for s in seen] == [(1, 2, 3), (2, 4, 5), (4, 8, 9)]


def test_iasl_sees_the_unarmed_flag_only_on_the_unarmed_dimm(multi: Any) -> None:
    cfg, _, records = multi
    seen = [(r["Device Handle"].int, r["Flags"].int, r["Device not armed"].int) for r in of_type(records, 1)]
    assert seen == [(1, 32, 0), (2, 32, 0), (4, 40, 1)]  # 32: health events enabled (the Xen transport)
    assert [d.unarmed for d in by_slot(cfg)] == [False, False, True]


def test_iasl_sees_control_regions_with_serials(multi: Any) -> None:
    cfg, _, records = multi
    seen = [
        (r["Region Index"].int, r["Vendor Id"].int, r["Device Id"].int, r["Revision Id"].int,
         r["Serial Number"].int, r["Code"].int, r["Window Count"].int)
        for r in of_type(records, 4)
    ]
    assert seen == [(2 * (d.slot + 1) + 1, 0x8086, 1, 1, d.serial, 0x0301, 0) for d in by_slot(cfg)]
    assert [s[4] for s in seen] == [0x504D0000, 0x504D0001, 0x504D0003]


def test_iasl_sees_the_flush_hint_address(multi: Any) -> None:
    _, _, records = multi
    (hint,) = of_type(records, 6)
    assert (hint["Device Handle"].int, hint["Hint Count"].int, hint["Hint Address"].int) == (1, 1, 0xF8000000)


def test_iasl_sees_mem_ctrl_persistence_as_capability_2(multi: Any) -> None:
    _, _, records = multi
    (caps,) = of_type(records, 7)
    assert caps["Highest Capability"].int == 1
    assert caps["Capabilities (decoded below)"].int == 2
    assert (caps["Cache Flush to NVDIMM"].int, caps["Memory Flush to NVDIMM"].int) == (0, 1)


def test_iasl_sees_cpu_persistence_as_capability_3(tmp_path: Path) -> None:
    _, records, _ = decoded(build_tables(load_example("example.toml")).nfit, tmp_path)
    (caps,) = of_type(records, 7)
    assert caps["Capabilities (decoded below)"].int == 3
    assert (caps["Cache Flush to NVDIMM"].int, caps["Memory Flush to NVDIMM"].int) == (1, 1)


def test_iasl_sees_no_capabilities_when_persistence_is_not_configured(tmp_path: Path) -> None:
    cfg = load_example("example.toml", platform={})
    assert cfg.persistence is None
    _, records, _ = decoded(build_tables(cfg).nfit, tmp_path)
    assert [r["Subtable Type"].int for r in records] == [0, 1, 4]


def test_iasl_sees_the_example_dimm(tmp_path: Path) -> None:
    _, records, _ = decoded(build_tables(load_example("example.toml")).nfit, tmp_path)
    spa, memdev, dcr, _caps = records
    assert (spa["Address Range Base"].int, spa["Address Range Length"].int) == (5 * GiB, 256 * MiB)
    assert (memdev["Device Handle"].int, memdev["Range Index"].int, memdev["Control Region Index"].int) == (1, 2, 3)
    assert dcr["Serial Number"].int == 0x504D0000


def test_iasl_decodes_256_dimms_up_to_slot_255(tmp_path: Path) -> None:
    dimm_list = [Dimm(s, 8 * GiB + s * 2 * MiB, 2 * MiB, node=s % 4, serial=s, flush_hint=0xF0000000 + 8 * s)
                 for s in range(256)]
    nfit = build_nfit(dimm_list, "cpu")
    header, records, _ = decoded(nfit, tmp_path)
    assert header["Table Length"].int == len(nfit) == 40 + 208 * 256 + 16
    last_memdev = of_type(records, 1)[-1]
    assert (last_memdev["Device Handle"].int, last_memdev["Range Index"].int) == (256, 512)
    assert last_memdev["Control Region Index"].int == 513
    assert of_type(records, 0)[-1]["Proximity Domain"].int == 3
    assert of_type(records, 6)[-1]["Hint Address"].int == 0xF0000000 + 8 * 255


def test_iasl_recompiles_the_decoded_nfit_to_the_same_structures(multi: Any, tmp_path: Path) -> None:
    """iasl stamps its own compiler ID into the header, so only the body is compared."""
    _, nfit, _ = multi
    again = compile_asl(decompile(nfit, tmp_path, "nfit"), tmp_path, "nfit_again")
    assert again[HEADER_SIZE:] == nfit[HEADER_SIZE:]
    assert again[:28] == nfit[:9] + again[9:10] + nfit[10:28]


@pytest.mark.parametrize(
    ("offset", "value", "complaint"),
    [(40, 9, "Unknown NFIT subtable type"), (42, 0x28, "terminates early"), (9, None, "checksum")],
    ids=["unknown-type", "short-length", "checksum"],
)
def test_iasl_check_rejects_a_corrupted_nfit(tmp_path: Path, offset: int, value: int | None, complaint: str) -> None:
    """The iasl tests above would notice a broken table: the helper fails on iasl's complaints."""
    nfit = bytearray(build_tables(load_example("multi.toml")).nfit)
    if value is None:
        nfit[offset] ^= 1
    else:
        nfit[offset] = value
        nfit[9] = 0
        nfit[9] = (-sum(nfit)) & 0xFF
    with pytest.raises(AcpicaError, match=f"(?i){complaint}"):
        decompile(bytes(nfit), tmp_path)
