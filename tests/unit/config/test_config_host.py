"""The `[host]` section: where the host pmem under the backing files lies, each rule naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from pmemd import config

SPA = 0x10_0000_0000


def host(**fields: Any) -> config.Config:
    return config.from_mapping({"domid": 1, "host": fields})


def rejects(fields: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        host(**fields)
    assert info.value.field == field and words in info.value.rule


def test_without_a_host_section_nothing_is_described() -> None:
    assert config.from_mapping({"domid": 1}).host is None


def test_an_empty_host_section_means_discovery_through_sysfs() -> None:
    assert host().host == config.HostConfig(None, None, (0, 0))


def test_explicit_base_data_and_reserved_areas_are_kept() -> None:
    cfg = host(spa_base=f"{SPA:#x}", data=[SPA, SPA + (1 << 30)], reserved=[SPA, SPA + 0x200000])
    assert cfg.host == config.HostConfig(SPA, (SPA, SPA + (1 << 30)), (SPA, SPA + 0x200000))


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"spa_base": SPA + 1}, "host.spa_base", "4 KiB aligned"),
        ({"spa_base": "somewhere"}, "host.spa_base", "expected an integer"),
        ({"spa_base": SPA, "data": [SPA]}, "host.data", "must be [start, end]"),
        ({"spa_base": SPA, "data": [SPA + 4096, SPA]}, "host.data", "is empty"),
        ({"data": [SPA, SPA + 4096]}, "host.data", "needs an explicit host.spa_base"),
        ({"reserved": [SPA + 8192, SPA]}, "host.reserved", "ends before it starts"),
        ({"reserved": [SPA, SPA + 100]}, "host.reserved", "4 KiB aligned"),
        ({"size": 1}, "host.size", "unknown field"),
    ],
)
def test_a_bad_host_description_is_refused_naming_the_field(fields: dict[str, Any], field: str, words: str) -> None:
    rejects(fields, field, words)
