"""`[[nvdimm]] flags`: NFIT memory-device failure and health flags, by name, and what the NFIT gets."""

from __future__ import annotations

import pytest

from acpi.layout import (
    MEMDEV_FLAG_NAMES,
    MEMDEV_HEALTH_ENABLED,
    MEMDEV_MAP_FAILED,
    MEMDEV_NOT_ARMED,
    MEMDEV_SAVE_FAILED,
)
from acpi.nfit import TYPE_MEMDEV, TYPE_SPA, build_nfit, parse_nfit
from pmemd import config
from pmemd.daemon.tables import build_tables, dimms
from tests.harness.config import rejects, with_dimms


def memdev_flags(raw: dict) -> int:
    return dimms(config.from_mapping(raw))[0].memdev_flags


def structures(raw: dict) -> list:
    cfg = config.from_mapping(raw)
    return parse_nfit(build_nfit(dimms(cfg), None))


def test_each_named_flag_sets_its_memdev_bit() -> None:
    for name, bit in MEMDEV_FLAG_NAMES.items():
        assert memdev_flags(with_dimms({"flags": [name]}, dsm={"mode": "mmio"})) & ~MEMDEV_HEALTH_ENABLED == bit


def test_flags_combine() -> None:
    raw = with_dimms({"flags": ["save-fail", "not-armed"]})
    assert memdev_flags(raw) & ~MEMDEV_HEALTH_ENABLED == MEMDEV_SAVE_FAILED | MEMDEV_NOT_ARMED


def test_unarmed_still_sets_not_armed() -> None:
    assert memdev_flags(with_dimms({"unarmed": True})) & MEMDEV_NOT_ARMED


def test_health_enabled_is_set_where_the_daemon_raises_health_events() -> None:
    assert memdev_flags(with_dimms({})) & MEMDEV_HEALTH_ENABLED


def test_health_enabled_is_clear_on_the_qemu_transport_which_carries_no_events(tmp_path) -> None:
    dsm = {"transport": "qemu", "mode": "ram", "doorbell": str(tmp_path / "d.sock"), "ram": str(tmp_path / "ram")}
    assert not memdev_flags(with_dimms({}, dsm=dsm)) & MEMDEV_HEALTH_ENABLED


def test_an_unknown_flag_is_refused_naming_the_known_ones() -> None:
    err = rejects(with_dimms({}, {"flags": ["save_fail"]}), "nvdimm[1].flags", "unknown flag 'save_fail'")
    assert "map-failed" in err.rule


def test_flags_that_are_not_a_list_of_names_are_refused() -> None:
    rejects(with_dimms({"flags": "save-fail"}), "nvdimm[0].flags", "must be a list")


def test_a_flag_listed_twice_is_refused() -> None:
    rejects(with_dimms({"flags": ["not-armed", "not-armed"]}), "nvdimm[0].flags", "twice")


def test_a_map_failed_dimm_has_no_spa_range_and_its_memdev_names_index_0() -> None:
    parsed = structures(with_dimms({"flags": ["map-failed"]}, {}))
    spas = [s for s in parsed if s.header.type == TYPE_SPA]
    memdevs = [s for s in parsed if s.header.type == TYPE_MEMDEV]
    assert len(spas) == 1  # the other DIMM's
    assert [(m.device_handle, m.range_index, bool(m.flags & MEMDEV_MAP_FAILED)) for m in memdevs] == [
        (1, 0, True), (2, spas[0].range_index, False)]


@pytest.mark.parametrize("name", ["save-fail", "restore-fail", "flush-fail", "health-observed"])
def test_other_flags_keep_the_spa_range(name: str) -> None:
    parsed = structures(with_dimms({"flags": [name]}))
    assert [s.header.type for s in parsed].count(TYPE_SPA) == 1


def test_tables_build_with_every_flag_set() -> None:
    assert build_tables(config.from_mapping(with_dimms({"flags": list(MEMDEV_FLAG_NAMES)}))).nfit
