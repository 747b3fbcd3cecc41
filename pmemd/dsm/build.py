"""Assembling a guest's dispatcher from its configuration, with label stores injected.

Opening stores is I/O and stays with the caller (`label_file.open_label_stores`), so
building the dispatcher itself is pure and tests can inject `MemoryLabelStore`s.
"""

from __future__ import annotations

from typing import Any, Mapping

from acpi.dsm_buffer import ROOT_HANDLE

from pmemd.config import Config

from .devices import Dimm, Root, slot_to_handle
from .dispatcher import Dispatcher, Target
from .families import intel_dimm_functions, label_methods_dimm_functions, nfit_root_functions
from .health import Health
from .label_store import LabelStore
from .media import MediaErrors


def build_dispatcher(
    config: Config,
    labels: Mapping[int, LabelStore],
    *,
    media: MediaErrors | None = None,
    health: Mapping[int, Health] | None = None,
) -> Dispatcher:
    """A dispatcher for `config`'s root and DIMMs; `labels` maps slot → label store.

    A DIMM missing from `labels` has no label area: functions 4-6 are neither advertised
    nor served for it. `media` (poison, scrub clock and rate) and `health` (slot → saved
    health) carry state restored from a previous run; absent, they start fresh. The
    devices are reachable afterwards as `dispatcher.target(handle).device`.
    """
    root_table = nfit_root_functions()
    dimm_table = intel_dimm_functions()
    other_table = label_methods_dimm_functions()  # non-Intel families: labels via _LSx only
    root = Root(config.nvdimms) if media is None else Root(config.nvdimms, media)
    targets: dict[int, Target[Any]] = {ROOT_HANDLE: Target(root_table, root)}
    for nvdimm in config.nvdimms:
        dimm = Dimm(nvdimm, labels.get(nvdimm.slot))
        if health is not None and nvdimm.slot in health:
            dimm.health = health[nvdimm.slot]
        table = dimm_table if nvdimm.family == "intel" else other_table
        targets[slot_to_handle(nvdimm.slot)] = Target(table, dimm)
    return Dispatcher(targets)
