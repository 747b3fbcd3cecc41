"""Guest configs for tests: one way to write them, and the repository's examples.

`guest` builds a config as the mapping its TOML parses to; `nvdimm` adds a DIMM and creates its
(sparse) backing file; `write_toml` writes a mapping as a config file for a `pmemd` process, and
`pmemd.config.from_mapping` turns the same mapping into a `Config` for a daemon in the test's own
trio run. `write_config` is the small guest most daemon-process tests start. Every test config
is written here, so a new config key has one place to be taught.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pmemd import config as configmod
from pmemd.config import ConfigError, parse_size
from tests.harness.paths import CONFIGS

MiB = 1 << 20


def nvdimm(backing: Path, size: int | str, **keys: Any) -> dict[str, Any]:
    """One `[[nvdimm]]` table; its backing file is created, sparse, at `size` bytes."""
    with open(backing, "wb") as f:
        f.truncate(parse_size(size, "size"))
    return {"backing": str(backing), "size": size, **keys}


def guest_config(domid: int, hypervisor: Path | str, *, lowmem: str = "64M", vcpus: int | None = None,
          mode: str | None = None, xenstore: Path | str | None = None, qmp: Path | str | None = None,
          nvdimms: Iterable[Mapping[str, Any]] = (), **sections: Any) -> dict[str, Any]:
    """A guest config mapping; keys left as None are left out (the daemon's defaults apply)."""
    raw: dict[str, Any] = {"domid": domid, "guest": {"lowmem": lowmem}}
    if vcpus is not None:
        raw["guest"]["vcpus"] = vcpus
    if mode is not None:
        raw["dsm"] = {"mode": mode}
    raw["xen"] = {"hypervisor": str(hypervisor)}
    if xenstore is not None:
        raw["xen"]["xenstore"] = str(xenstore)
    if qmp is not None:
        raw["qmp"] = {"socket": str(qmp)}
    raw.update(sections)
    if dimms := [dict(d) for d in nvdimms]:
        raw["nvdimm"] = dimms
    return raw


def write_toml(path: Path, raw: Mapping[str, Any]) -> Path:
    """`raw` as a TOML config file at `path` (scalars, tables and arrays of tables)."""
    scalars = [f"{key} = {_value(v)}" for key, v in raw.items() if not isinstance(v, (dict, list)) or _inline(v)]
    lines = scalars[:]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += [f"[{key}]", *(f"{k} = {_value(v)}" for k, v in value.items())]
        elif isinstance(value, list) and not _inline(value):
            for table in value:
                lines += [f"[[{key}]]", *(f"{k} = {_value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == json.loads(json.dumps(raw, default=str)), "TOML writer lost a value"
    return path


def _inline(value: Any) -> bool:
    return isinstance(value, list) and not any(isinstance(v, dict) for v in value)


def _value(value: Any) -> str:
    """A TOML value; JSON's spelling of strings, numbers, booleans and arrays is TOML's too."""
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(directory: Path, hypervisor: Path | str, *, domid: int = 9, vcpus: int = 2,
                 nvdimms: int = 1) -> Path:
    """`directory`/guest.toml: 64 MiB RAM, MMIO DSM page, embedded xenstore, QMP on
    `directory`/qmp.sock, `nvdimms` DIMMs of 6 MiB (2 MiB labels) on nodes 0, 1, ..."""
    dimms = [nvdimm(directory / f"nv{slot}.img", "6M", label_size="2M", slot=slot, node=slot, address="auto")
             for slot in range(nvdimms)]
    raw = guest_config(domid, hypervisor, vcpus=vcpus, mode="mmio", xenstore="embedded", qmp=directory / "qmp.sock",
                nvdimms=dimms)
    return write_toml(directory / "guest.toml", raw)


# -- mappings for the validation tests: what `from_mapping` accepts and refuses -----------------


def base() -> dict[str, Any]:
    """A valid guest: 1 GiB low RAM, 1 GiB high RAM, one 1 GiB DIMM with 2 MiB of labels."""
    return {
        "domid": 7,
        "guest": {"lowmem": "1G", "highmem": "1G", "vcpus": 2},
        "dsm": {"mode": "mmio"},
        "nvdimm": [{"backing": "/tmp/nv0.img", "size": "1026M", "label_size": "2M"}],
    }


def with_dimms(*dimms: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """`base()` with the given DIMM tables and top-level sections replaced."""
    raw = base()
    raw["nvdimm"] = [{"backing": f"/tmp/nv{i}.img", "size": "1G", **d} for i, d in enumerate(dimms)]
    raw.update(sections)
    return raw


def rejects(raw: dict[str, Any], field: str, phrase: str) -> ConfigError:
    """Assert `raw` is refused for `field` with a rule containing `phrase`."""
    with pytest.raises(ConfigError) as info:
        configmod.from_mapping(raw)
    err = info.value
    assert err.field == field, str(err)
    assert phrase in err.rule, str(err)
    assert str(err) == f"{field}: {err.rule}"
    return err


def load_example(name: str, **changes: Any) -> configmod.Config:
    """configs/NAME as `pmemd` loads it, or with top-level keys replaced by `changes`."""
    if not changes:
        return configmod.load(CONFIGS / name)
    raw = tomllib.loads((CONFIGS / name).read_text())
    raw.update(changes)
    return configmod.from_mapping(raw)
