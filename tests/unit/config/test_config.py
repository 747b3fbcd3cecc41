"""The guest config: one test per validation rule, plus sizes, placement and file loading.

Every rejection must name the field as a dotted path and state the rule, so each test
checks both `ConfigError.field` and a phrase of `ConfigError.rule`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pmemd import config
from pmemd.config import ConfigError, GiB, KiB, MiB
from tests.harness.config import base, rejects, with_dimms
from tests.harness.paths import CONFIGS


def test_base_config_is_valid() -> None:
    cfg = config.from_mapping(base())
    assert cfg.domid == 7
    assert cfg.nvdimms[0].pmem_size == GiB


# --- unknown fields ---------------------------------------------------------------


def test_unknown_top_level_field_is_rejected() -> None:
    rejects({**base(), "bogus": 1}, "bogus", "unknown field")


@pytest.mark.parametrize("section", ["guest", "dsm", "xen", "qmp", "platform"])
def test_unknown_field_in_a_section_is_rejected(section: str) -> None:
    raw = base()
    raw[section] = {**raw.get(section, {}), "bogus": 1}
    rejects(raw, f"{section}.bogus", "unknown field")


def test_unknown_nvdimm_field_is_rejected() -> None:
    rejects(with_dimms({}, {"sise": "1G"}), "nvdimm[1].sise", "unknown field")


def test_section_that_is_not_a_table_is_rejected() -> None:
    rejects({**base(), "guest": 5}, "guest", "must be a table")


# --- domid --------------------------------------------------------------------------


def test_domid_is_required() -> None:
    raw = base()
    del raw["domid"]
    rejects(raw, "domid", "is required")


@pytest.mark.parametrize("domid", [0, 0x7FF0, -1])
def test_domid_outside_1_to_7fef_is_rejected(domid: int) -> None:
    rejects({**base(), "domid": domid}, "domid", "must be between 0x1 and 0x7fef")


def test_domid_accepts_the_highest_unreserved_id() -> None:
    assert config.from_mapping({**base(), "domid": 0x7FEF}).domid == 0x7FEF


def test_domid_that_is_not_an_integer_is_rejected() -> None:
    rejects({**base(), "domid": "seven"}, "domid", "expected an integer")


# --- guest --------------------------------------------------------------------------


@pytest.mark.parametrize("hole", ["128M", "300M", "3328M"])
def test_mmio_hole_not_a_256m_multiple_between_256m_and_3g_is_rejected(hole: str) -> None:
    raw = base()
    raw["guest"]["mmio_hole"] = hole
    rejects(raw, "guest.mmio_hole", "multiple of 256 MiB between 256M and 3G")


def test_lowmem_below_16m_is_rejected() -> None:
    raw = base()
    raw["guest"]["lowmem"] = "8M"
    rejects(raw, "guest.lowmem", "at least 16 MiB")


def test_lowmem_not_a_4k_multiple_is_rejected() -> None:
    raw = base()
    raw["guest"]["lowmem"] = 64 * MiB + 512
    rejects(raw, "guest.lowmem", "multiple of 4 KiB")


def test_lowmem_reaching_into_the_mmio_hole_is_rejected() -> None:
    raw = base()
    raw["guest"].update(lowmem="3G", mmio_hole="2G")
    rejects(raw, "guest.lowmem", "must end below the MMIO hole at 0x80000000")


def test_highmem_not_a_4k_multiple_is_rejected() -> None:
    raw = base()
    raw["guest"]["highmem"] = GiB + 1
    rejects(raw, "guest.highmem", "multiple of 4 KiB")


def test_highmem_above_128t_is_rejected() -> None:
    raw = base()
    raw["guest"]["highmem"] = "129T"
    rejects(raw, "guest.highmem", "below 128 TiB")


@pytest.mark.parametrize("vcpus", [0, 129])
def test_vcpus_outside_1_to_128_is_rejected(vcpus: int) -> None:
    raw = base()
    raw["guest"]["vcpus"] = vcpus
    rejects(raw, "guest.vcpus", "must be between 0x1 and 0x80")


def test_size_that_is_not_a_size_is_rejected() -> None:
    raw = base()
    raw["guest"]["highmem"] = "lots"
    rejects(raw, "guest.highmem", "expected a size")


def test_negative_size_is_rejected() -> None:
    raw = base()
    raw["guest"]["highmem"] = -4096
    rejects(raw, "guest.highmem", "must not be negative")


def test_boolean_size_is_rejected() -> None:
    raw = base()
    raw["guest"]["highmem"] = True
    rejects(raw, "guest.highmem", "expected a size")


# --- sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("128K", 128 * KiB),
        ("1G", GiB),
        ("2MiB", 2 * MiB),
        ("2mb", 2 * MiB),
        (" 3 T ", 3 << 40),
        ("4096", 4096),
        ("10B", 10),
        (4096, 4096),
        (0, 0),
    ],
)
def test_sizes_parse_from_suffixed_strings_and_integers(text: str | int, value: int) -> None:
    assert config.parse_size(text, "f") == value


@pytest.mark.parametrize("text", ["1.5G", "1P", "G", "", "-1G", 1.0])
def test_malformed_sizes_are_rejected(text: Any) -> None:
    with pytest.raises(ConfigError, match=r"^f: expected a size"):
        config.parse_size(text, "f")


def test_integers_accept_hex_strings() -> None:
    assert config.parse_int("0x0A18", "f", 0, 0xFFFF) == 0x0A18


# --- dsm ----------------------------------------------------------------------------


def test_dsm_mode_other_than_mmio_or_ram_is_rejected() -> None:
    rejects({**base(), "dsm": {"mode": "io"}}, "dsm.mode", 'must be "mmio" or "ram"')


def test_dsm_page_not_4k_aligned_is_rejected() -> None:
    rejects({**base(), "dsm": {"page": 0xFBFFF800}}, "dsm.page", "must be 4 KiB aligned")


def test_dsm_page_above_4g_is_rejected() -> None:
    rejects({**base(), "dsm": {"page": 0x100000000}}, "dsm.page", "must be between")


@pytest.mark.parametrize("page", [0xEFFFF000, 0xFC000000, 0x1000])
def test_mmio_dsm_page_outside_the_hole_below_the_platform_devices_is_rejected(page: int) -> None:
    rejects({**base(), "dsm": {"mode": "mmio", "page": page}}, "dsm.page", "in mmio mode must lie in the MMIO hole")


def test_mmio_dsm_page_defaults_to_the_page_below_the_platform_devices() -> None:
    assert config.from_mapping(base()).dsm.page == 0xFBFFF000


@pytest.mark.parametrize("page", [0x40000000, 0xFC000000])
def test_ram_dsm_page_outside_low_ram_and_the_mmio_hole_is_rejected(page: int) -> None:
    rejects({**base(), "dsm": {"mode": "ram", "page": page}}, "dsm.page", "in ram mode must lie in guest RAM")


def test_ram_dsm_page_may_lie_in_the_mmio_hole_where_pmemd_populates_it() -> None:
    assert config.from_mapping({**base(), "dsm": {"mode": "ram", "page": 0xFBFFF000}}).dsm.page == 0xFBFFF000


def test_pmem_mode_defaults_to_direct_with_a_host_section_and_none_without() -> None:
    assert config.from_mapping(base()).pmem.mode == "none"
    assert config.from_mapping({**base(), "host": {"spa_base": 0}}).pmem.mode == "direct"


def test_mirrored_pmem_requires_a_flush_hint_on_every_nvdimm() -> None:
    rejects({**base(), "pmem": {"mode": "mirrored"}}, "nvdimm[0].flush_hint", "is required with pmem.mode")


def test_mirrored_pmem_with_flush_hints_is_accepted() -> None:
    raw = {**base(), "pmem": {"mode": "mirrored", "writeback_interval": 5}}
    raw["nvdimm"] = [{**raw["nvdimm"][0], "flush_hint": 0xFBFFE000}]
    cfg = config.from_mapping(raw)
    assert (cfg.pmem.mode, cfg.pmem.writeback_interval) == ("mirrored", 5.0)


def test_direct_pmem_without_a_host_section_is_rejected() -> None:
    rejects({**base(), "pmem": {"mode": "direct"}}, "pmem.mode", "needs a [host] section")


def test_ram_dsm_page_defaults_to_the_last_page_of_low_ram() -> None:
    assert config.from_mapping({**base(), "dsm": {"mode": "ram"}}).dsm.page == GiB - 4096


def test_notify_port_above_0xfffc_is_rejected() -> None:
    rejects({**base(), "dsm": {"notify_port": 0xFFFD}}, "dsm.notify_port", "must be between 0x0 and 0xfffc")


def test_notify_port_not_4_byte_aligned_is_rejected() -> None:
    rejects({**base(), "dsm": {"notify_port": 0x0A1A}}, "dsm.notify_port", "must be 4-byte aligned")


# --- xen, platform, nvdimm array ----------------------------------------------------


@pytest.mark.parametrize("key", ["hypervisor", "xenstore"])
@pytest.mark.parametrize("value", ["", 5])
def test_xen_socket_that_is_empty_or_not_a_string_is_rejected(key: str, value: Any) -> None:
    rejects({**base(), "xen": {key: value}}, f"xen.{key}", 'must be a socket path or "embedded"')


def test_xen_defaults_to_embedded() -> None:
    xen = config.from_mapping(base()).xen
    assert (xen.hypervisor, xen.xenstore) == ("embedded", "embedded")


def test_persistence_other_than_cpu_or_mem_ctrl_is_rejected() -> None:
    rejects({**base(), "platform": {"persistence": "battery"}}, "platform.persistence", 'must be "cpu" or "mem-ctrl"')


def test_persistence_defaults_to_none() -> None:
    assert config.from_mapping(base()).persistence is None


def test_nvdimm_that_is_not_an_array_is_rejected() -> None:
    rejects({**base(), "nvdimm": {"size": "1G"}}, "nvdimm", "must be an array of tables")


def test_nvdimm_entry_that_is_not_a_table_is_rejected() -> None:
    rejects({**base(), "nvdimm": ["nv0.img"]}, "nvdimm[0]", "must be a table")


# --- nvdimm fields ------------------------------------------------------------------


def test_nvdimm_backing_is_required() -> None:
    raw = with_dimms({})
    del raw["nvdimm"][0]["backing"]
    rejects(raw, "nvdimm[0].backing", "is required")


def test_nvdimm_size_is_required() -> None:
    raw = with_dimms({})
    del raw["nvdimm"][0]["size"]
    rejects(raw, "nvdimm[0].size", "is required")


def test_label_size_below_128k_is_rejected() -> None:
    rejects(with_dimms({}, {"label_size": "64K"}), "nvdimm[1].label_size", "must be 0 or at least 128 KiB")


def test_label_size_zero_is_accepted() -> None:
    assert config.from_mapping(with_dimms({"label_size": 0})).nvdimms[0].pmem_size == GiB


def test_label_size_not_a_4k_multiple_is_rejected() -> None:
    rejects(with_dimms({}, {"label_size": 128 * KiB + 512}), "nvdimm[1].label_size", "multiple of 4 KiB")


@pytest.mark.parametrize("size", ["2M", "1M"])
def test_size_not_above_label_size_is_rejected(size: str) -> None:
    rejects(with_dimms({"size": size, "label_size": "2M"}), "nvdimm[0].size", "must exceed label_size")


def test_pmem_not_a_2m_multiple_is_rejected() -> None:
    rejects(with_dimms({"size": "1G", "label_size": "128K"}), "nvdimm[0].size", "must be a multiple of 2 MiB")


@pytest.mark.parametrize("slot", [-1, 256])
def test_slot_outside_0_to_255_is_rejected(slot: int) -> None:
    rejects(with_dimms({"slot": slot}), "nvdimm[0].slot", "must be between 0x0 and 0xff")


def test_slot_used_twice_is_rejected() -> None:
    rejects(with_dimms({"slot": 1}, {}), "nvdimm[1].slot", "slot 1 is already used by nvdimm[0]")


def test_serial_used_twice_is_rejected() -> None:
    rejects(with_dimms({"serial": 7}, {"serial": 7}), "nvdimm[1].serial", "serial 0x7 is already used by nvdimm[0]")


def test_explicit_serial_equal_to_another_default_is_rejected() -> None:
    rejects(with_dimms({}, {"serial": 0x504D0000}), "nvdimm[1].serial", "is already used by nvdimm[0]")


def test_slot_defaults_to_the_entry_index() -> None:
    assert [d.slot for d in config.from_mapping(with_dimms({}, {})).nvdimms] == [0, 1]


@pytest.mark.parametrize("node", [-1, 1 << 32])
def test_node_outside_u32_is_rejected(node: int) -> None:
    rejects(with_dimms({"node": node}), "nvdimm[0].node", "must be between 0x0 and 0xffffffff")


def test_unarmed_that_is_not_a_boolean_is_rejected() -> None:
    rejects(with_dimms({"unarmed": "yes"}), "nvdimm[0].unarmed", "must be true or false")


def test_serial_defaults_to_pm_and_the_slot() -> None:
    assert config.from_mapping(with_dimms({"slot": 5})).nvdimms[0].serial == 0x504D0005


def test_serial_outside_u32_is_rejected() -> None:
    rejects(with_dimms({"serial": 1 << 32}), "nvdimm[0].serial", "must be between")


def test_address_not_2m_aligned_is_rejected() -> None:
    rejects(with_dimms({"address": 0x140100000}), "nvdimm[0].address", "must be 2 MiB aligned")


def test_address_that_is_neither_auto_nor_an_integer_is_rejected() -> None:
    rejects(with_dimms({"address": "high"}), "nvdimm[0].address", "expected an integer")


def test_address_overlapping_low_ram_is_rejected() -> None:
    rejects(with_dimms({"address": 0x20000000}), "nvdimm[0].address", "overlaps guest RAM [0x0, 0x40000000)")


def test_address_overlapping_high_ram_is_rejected() -> None:
    rejects(
        with_dimms({"address": 0x13FE00000}),
        "nvdimm[0].address",
        "overlaps guest RAM [0x100000000, 0x140000000)",
    )


def test_address_overlapping_the_mmio_hole_is_rejected() -> None:
    rejects(
        with_dimms({"address": 0xF0000000, "size": "2M"}),
        "nvdimm[0].address",
        "overlaps the MMIO hole [0xf0000000, 0x100000000)",
    )


def test_address_overlapping_another_nvdimm_is_rejected() -> None:
    rejects(
        with_dimms({"address": 0x200000000}, {"address": 0x220000000}),
        "nvdimm[1].address",
        "overlaps nvdimm[0] [0x200000000, 0x240000000)",
    )


def test_adjacent_nvdimms_are_accepted() -> None:
    cfg = config.from_mapping(with_dimms({"address": 0x200000000}, {"address": 0x240000000}))
    assert cfg.nvdimms[0].end == cfg.nvdimms[1].address


def test_address_range_past_the_gpa_limit_is_rejected() -> None:
    rejects(with_dimms({"address": (1 << 48) - 2 * MiB}), "nvdimm[0].address", "beyond the 0x1000000000000 limit")


def test_address_at_or_past_the_gpa_limit_is_rejected() -> None:
    rejects(with_dimms({"address": 1 << 48}), "nvdimm[0].address", "must be between")


def test_dsm_page_inside_an_nvdimm_range_is_rejected() -> None:
    """The DSM page lies in RAM or in the hole, so a DIMM over it is refused as an overlap first."""
    raw = with_dimms({"address": 0x20000000}, dsm={"mode": "ram", "page": 0x20000000})
    rejects(raw, "nvdimm[0].address", "overlaps guest RAM")


def test_flush_hint_not_8_byte_aligned_is_rejected() -> None:
    rejects(with_dimms({"flush_hint": 0xF8000004}), "nvdimm[0].flush_hint", "must be 8-byte aligned")


def test_flush_hint_above_4g_is_rejected() -> None:
    rejects(with_dimms({"flush_hint": 0x100000000}), "nvdimm[0].flush_hint", "must be between")


@pytest.mark.parametrize("hint", [0x20000000, 0xEFFFFFF8, 0xFC000000])
def test_flush_hint_outside_the_hole_below_the_platform_devices_is_rejected(hint: int) -> None:
    rejects(with_dimms({"flush_hint": hint}), "nvdimm[0].flush_hint", "must lie in the MMIO hole")


def test_flush_hint_in_the_dsm_page_is_rejected() -> None:
    rejects(with_dimms({"flush_hint": 0xFBFFF008}), "nvdimm[0].flush_hint", "must not lie in the DSM page")


def test_flush_hint_used_twice_is_rejected() -> None:
    rejects(
        with_dimms({"flush_hint": 0xF8000000}, {"flush_hint": 0xF8000000}),
        "nvdimm[1].flush_hint",
        "is already used by nvdimm[0]",
    )


def test_flush_hint_defaults_to_none() -> None:
    assert config.from_mapping(base()).nvdimms[0].flush_hint is None


# --- automatic placement ------------------------------------------------------------


def test_auto_address_starts_above_high_ram() -> None:
    cfg = config.from_mapping(with_dimms({}))
    assert cfg.nvdimms[0].address == cfg.guest.highmem_end == 0x140000000


def test_auto_address_starts_at_4g_without_high_ram() -> None:
    raw = with_dimms({})
    raw["guest"]["highmem"] = 0
    assert config.from_mapping(raw).nvdimms[0].address == 4 * GiB


def test_auto_address_is_1g_aligned() -> None:
    raw = with_dimms({"size": "2M"}, {"size": "2M"})
    raw["guest"]["highmem"] = "1026M"
    first, second = config.from_mapping(raw).nvdimms
    assert (first.address, second.address) == (6 * GiB, 7 * GiB)


def test_auto_address_follows_the_fixed_dimms() -> None:
    cfg = config.from_mapping(with_dimms({}, {"address": 0x400000000, "size": "2M"}))
    assert cfg.nvdimms[0].address == 0x440000000


def test_auto_addresses_are_assigned_in_slot_order() -> None:
    cfg = config.from_mapping(with_dimms({"slot": 2}, {"slot": 0}, {"slot": 1}))
    assert [(d.slot, d.address) for d in cfg.nvdimms] == [
        (2, 0x1C0000000),
        (0, 0x140000000),
        (1, 0x180000000),
    ]


def test_explicit_auto_address_is_the_default() -> None:
    assert config.from_mapping(with_dimms({"address": "auto"})) == config.from_mapping(with_dimms({}))


# --- files --------------------------------------------------------------------------


def test_relative_backing_is_resolved_against_the_config_directory(tmp_path: Path) -> None:
    path = tmp_path / "guest.toml"
    path.write_text('domid = 3\n[[nvdimm]]\nbacking = "images/nv0.img"\nsize = "2M"\n')
    assert config.load(path).nvdimms[0].backing == tmp_path / "images" / "nv0.img"


def test_absolute_backing_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "guest.toml"
    path.write_text('domid = 3\n[[nvdimm]]\nbacking = "/srv/nv0.img"\nsize = "2M"\n')
    assert config.load(path).nvdimms[0].backing == Path("/srv/nv0.img")


def test_relative_backing_from_mapping_uses_base_dir() -> None:
    cfg = config.from_mapping(with_dimms({"backing": "nv0.img"}), base_dir=Path("/etc/pmemd"))
    assert cfg.nvdimms[0].backing == Path("/etc/pmemd/nv0.img")


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("domid = \n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.field == "config"
    assert info.value.rule.startswith(f"{path} is not valid TOML: ")
    assert "line 1" in info.value.rule


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.toml")
    assert info.value.field == "config"
    assert info.value.rule.startswith(f"cannot read {tmp_path / 'absent.toml'}")


def test_domid_argument_overrides_the_file() -> None:
    assert config.load(CONFIGS / "example.toml", domid=42).domid == 42


def test_load_records_the_source() -> None:
    assert config.load(CONFIGS / "example.toml").source == CONFIGS / "example.toml"


def test_example_config_loads() -> None:
    cfg = config.load(CONFIGS / "example.toml")
    assert cfg.domid == 7
    assert cfg.guest.highmem_end == 5 * GiB
    assert cfg.dsm == config.DsmConfig("mmio", 0xFBFFF000, 0x0A18)
    assert cfg.persistence == "cpu"
    (dimm,) = cfg.nvdimms
    assert (dimm.address, dimm.pmem_size, dimm.label_size) == (5 * GiB, 256 * MiB, 2 * MiB)


def test_multi_config_loads() -> None:
    cfg = config.load(CONFIGS / "multi.toml")
    assert cfg.domid == 12
    assert cfg.dsm == config.DsmConfig("ram", 0x7FFFF000, 0x0A18)
    assert cfg.persistence == "mem-ctrl"
    summary = [(d.slot, d.node, d.address, d.pmem_size, d.unarmed, d.flush_hint) for d in cfg.nvdimms]
    assert summary == [
        (0, 0, 18 * GiB, 4 * GiB, False, 0xF8000000),  # auto, after the fixed DIMM
        (1, 1, 16 * GiB, 2 * GiB, False, None),  # fixed
        (3, 1, 22 * GiB, 512 * MiB, True, None),  # auto, next 1 GiB boundary
    ]


def test_config_is_immutable() -> None:
    cfg = config.from_mapping(base())
    with pytest.raises(AttributeError):
        cfg.domid = 8  # type: ignore[misc]


def test_from_mapping_does_not_modify_its_input() -> None:
    raw = base()
    snapshot = copy.deepcopy(raw)
    config.from_mapping(raw)
    assert raw == snapshot


@pytest.mark.parametrize("value", ["", 5])
def test_qmp_socket_that_is_empty_or_not_a_string_is_rejected(value: Any) -> None:
    rejects({**base(), "qmp": {"socket": value}}, "qmp.socket", "must be a socket path")
