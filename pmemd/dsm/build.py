"""Assembling a guest's dispatcher from its configuration, with label stores injected.

Opening stores is I/O and stays with the caller (`label_file.open_label_stores`), so
building the dispatcher itself is pure and tests can inject `MemoryLabelStore`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from acpi.dsm_buffer import INTEL_BUS_HANDLE, ROOT_HANDLE
from pmemd.config import Config

from .devices import Dimm, IntelBus, Root, slot_to_handle
from .dispatcher import Dispatcher, Target
from .families import intel_dimm_functions, label_methods_dimm_functions, nfit_root_functions
from .firmware_functions import intel_bus_functions
from .health import Health
from .label_store import LabelStore
from .media import MediaErrors
from .pmem_store import PmemStore


@dataclass(frozen=True)
class DsmHandlers:
    """A guest's dispatcher and the devices behind its handles, looked up once."""

    dispatcher: Dispatcher
    root: Root
    dimms: Mapping[int, Dimm]  # slot -> DIMM, in config order


def build_dispatcher(
    config: Config,
    labels: Mapping[int, LabelStore],
    *,
    media: MediaErrors | None = None,
    health: Mapping[int, Health] | None = None,
    pmem: Mapping[int, PmemStore] | None = None,
) -> DsmHandlers:
    """A dispatcher for `config`'s root and DIMMs; `labels` maps slot → label store.

    A DIMM missing from `labels` has no label area: functions 4-6 are neither advertised
    nor served for it. `media` (poison, scrub clock and rate) and `health` (slot → saved
    health) carry state restored from a previous run; absent, they start fresh. `pmem` maps
    slot → PMEM store: security erases (fns 24, 25, 28) are offered only for those DIMMs.
    """
    root_table = nfit_root_functions()
    dimm_table = intel_dimm_functions()
    other_tables = {family: label_methods_dimm_functions(family) for family in ("hpe1", "msft", "hyperv")}
    root = Root(config.nvdimms) if media is None else Root(config.nvdimms, media)
    targets: dict[int, Target[Any]] = {ROOT_HANDLE: Target(root_table, root)}
    dimms: dict[int, Dimm] = {}
    for nvdimm in config.nvdimms:
        dimm = Dimm(nvdimm, labels.get(nvdimm.slot), pmem=(pmem or {}).get(nvdimm.slot))
        if health is not None and nvdimm.slot in health:
            dimm.health = health[nvdimm.slot]
        table = dimm_table if nvdimm.family == "intel" else other_tables[nvdimm.family]
        targets[slot_to_handle(nvdimm.slot)] = Target(table, dimm)
        dimms[nvdimm.slot] = dimm
    intel = {slot: d for slot, d in dimms.items() if d.config.family == "intel"}
    targets[INTEL_BUS_HANDLE] = Target(intel_bus_functions(), IntelBus(intel))
    return DsmHandlers(Dispatcher(targets), root, dimms)
