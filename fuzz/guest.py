"""The guest devices the fuzz targets drive: the daemon's own, built from a fixed config.

Built fresh for every input (`fresh()`), so an input's outcome never depends on the inputs
before it and a saved crash replays on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pmemd.config import Config, from_mapping
from pmemd.dsm.build import DsmHandlers, build_dispatcher
from pmemd.dsm.label_store import MemoryLabelStore

LABEL_SIZE = 128 * 1024
MiB = 1 << 20

CONFIG: Config = from_mapping(
    {
        "domid": 7,
        "guest": {"lowmem": "64M", "vcpus": 2},
        "dsm": {"mode": "mmio"},
        "nvdimm": [
            {"backing": "nv0.img", "size": 4 * MiB + LABEL_SIZE, "label_size": LABEL_SIZE, "slot": 0},
            {"backing": "nv1.img", "size": 4 * MiB, "slot": 1, "family": "msft"},
            {"backing": "nv2.img", "size": 2 * MiB + LABEL_SIZE, "label_size": LABEL_SIZE, "slot": 2},
        ],
    },
    base_dir=Path("/nonexistent"),
)
"""Three DIMMs: Intel with labels, a non-Intel one without, Intel with labels in the last slot."""


@dataclass
class FuzzGuest:
    handlers: DsmHandlers
    labels: dict[int, MemoryLabelStore]


def fresh() -> FuzzGuest:
    labels = {d.slot: MemoryLabelStore(d.label_size) for d in CONFIG.nvdimms if d.label_size}
    return FuzzGuest(build_dispatcher(CONFIG, labels), labels)
