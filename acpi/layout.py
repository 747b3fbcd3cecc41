"""What the tables describe: the guest's NVDIMMs, and the identifiers derived from a slot.

Every cross-reference between NFIT structures and AML objects comes from the slot
through the small functions below, so the NFIT, the SSDT and the daemon agree on
handles, indexes and names by construction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

ROOT_UUID = uuid.UUID("2f10e7a4-9e91-11e4-89d3-123b93f75cba")  # NFIT bus family
INTEL_DIMM_UUID = uuid.UUID("4309ac30-0d11-11e4-9191-0800200c9a66")  # Intel DIMM family
PM_RANGE_GUID = uuid.UUID("66f0d379-b4f3-4074-ac43-0d3318b78cdb")  # byte-addressable pmem

Persistence = Literal["cpu", "mem-ctrl"]


def nfit_handle(slot: int) -> int:
    """NFIT device handle and `_ADR` of a DIMM: slot + 1, so 0 stays the root's."""
    return slot + 1


def spa_index(slot: int) -> int:
    """SPA range index of a DIMM's range: never 0 (Linux ignores index 0 PM ranges)."""
    return 2 * (slot + 1)


def dcr_index(slot: int) -> int:
    """Control region index of a DIMM: next to its SPA index, so both stay unique."""
    return spa_index(slot) + 1


def device_name(slot: int) -> str:
    """AML name of a DIMM's device: NV00..NVFF."""
    if not 0 <= slot <= 0xFF:
        raise ValueError(f"slot {slot} does not fit a two-hex-digit device name")
    return f"NV{slot:02X}"


@dataclass(frozen=True)
class Dimm:
    """One guest NVDIMM as the firmware tables describe it."""

    slot: int
    address: int  # guest-physical base of its PMEM range
    size: int  # guest-visible PMEM bytes (labels excluded)
    node: int = 0
    unarmed: bool = False
    serial: int = 0
    flush_hint: int | None = None
    family: uuid.UUID = INTEL_DIMM_UUID

    @property
    def handle(self) -> int:
        return nfit_handle(self.slot)


@dataclass(frozen=True)
class DsmPage:
    """Where the guest's AML finds the DSM page and its notify port."""

    address: int
    notify_port: int
