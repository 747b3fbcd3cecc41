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
INTEL_BUS_UUID = uuid.UUID("c7d8acd4-2df8-4b82-9f65-a325335af149")  # Intel bus family (FW activation)
INTEL_DIMM_UUID = uuid.UUID("4309ac30-0d11-11e4-9191-0800200c9a66")  # Intel DIMM family
PM_RANGE_GUID = uuid.UUID("66f0d379-b4f3-4074-ac43-0d3318b78cdb")  # byte-addressable pmem

# Intel DIMM label functions (revision 1): the AML's _LSI/_LSR/_LSW call them whatever the
# DIMM's _DSM family, and the daemon's label handlers serve them.
LABEL_REVISION = 1
FN_GET_LABEL_SIZE = 4
FN_GET_LABEL_DATA = 5
FN_SET_LABEL_DATA = 6

# DIMM `_DSM` families a config may choose (Linux's NVDIMM_FAMILY_* probe order: Intel,
# HPE1, HPE2, MSFT, Hyper-V; the first whose function 0 sets bit 0 wins). Only Intel
# has label functions in its mask, so any other family makes Linux use _LSI/_LSR/_LSW.
DIMM_FAMILIES: dict[str, uuid.UUID] = {
    "intel": INTEL_DIMM_UUID,
    "hpe1": uuid.UUID("9002c334-acf3-4c0e-9642-a235f0d53bc6"),
    "msft": uuid.UUID("1ee68b36-d4bd-4a1a-9a16-4f8e53d46e05"),
    "hyperv": uuid.UUID("5746c5f2-a9a2-4264-ad0e-e4ddc9e09e80"),
}

Persistence = Literal["cpu", "mem-ctrl"]

# NFIT memory-device map flags (ACPI 6.5 Table 5.157; Linux's ACPI_NFIT_MEM_*). The names are
# what a config's `[[nvdimm]] flags` lists; Linux shows them in `nmemX/nfit/flags` as
# save_fail, restore_fail, flush_fail, not_armed, smart_event, map_fail (and smart_notify
# for health-enabled, which the daemon sets itself when it can raise health events).
MEMDEV_SAVE_FAILED = 1 << 0
MEMDEV_RESTORE_FAILED = 1 << 1
MEMDEV_FLUSH_FAILED = 1 << 2
MEMDEV_NOT_ARMED = 1 << 3
MEMDEV_HEALTH_OBSERVED = 1 << 4
MEMDEV_HEALTH_ENABLED = 1 << 5
MEMDEV_MAP_FAILED = 1 << 6
MEMDEV_FLAG_NAMES: dict[str, int] = {
    "save-fail": MEMDEV_SAVE_FAILED,
    "restore-fail": MEMDEV_RESTORE_FAILED,
    "flush-fail": MEMDEV_FLUSH_FAILED,
    "not-armed": MEMDEV_NOT_ARMED,
    "health-observed": MEMDEV_HEALTH_OBSERVED,
    "map-failed": MEMDEV_MAP_FAILED,
}


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
    flags: int = 0  # configured MEMDEV_* bits (health-enabled comes from `health_events`)
    labels: bool = True  # has a label area: the SSDT gives it _LSI/_LSR/_LSW
    health_events: bool = False  # the platform can raise Notify 0x81 on this DIMM

    @property
    def handle(self) -> int:
        return nfit_handle(self.slot)

    @property
    def memdev_flags(self) -> int:
        """The memory-device map's flags: configured bits, `unarmed`, and health-enabled."""
        return (
            self.flags
            | (MEMDEV_NOT_ARMED if self.unarmed else 0)
            | (MEMDEV_HEALTH_ENABLED if self.health_events else 0)
        )

    @property
    def map_failed(self) -> bool:
        """The platform could not map it: no SPA range, and its memdev names SPA index 0."""
        return bool(self.flags & MEMDEV_MAP_FAILED)


@dataclass(frozen=True)
class Doorbell:
    """QEMU's notify style: a 1-byte doorbell write, then a wait on a completion word.

    The words sit in the page after the DSM page (`address + 4096`): the AML writes a
    fresh ticket to `ticket`, rings, and waits until the device model copies it to
    `done`, for at most `timeout_ms` (then the call answers status 4).
    """

    timeout_ms: int = 4000


@dataclass(frozen=True)
class DsmPage:
    """Where the guest's AML finds the DSM page and its notify port."""

    address: int
    notify_port: int
    doorbell: Doorbell | None = None  # None: Xen's trapped 4-byte notify write
