"""The targets a `_DSM` call can address: the NVDIMM root device and each DIMM.

Handlers receive one of these as `device`; state a future function needs (ARS progress,
SMART health) is added here as a field, not threaded through the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from acpi.layout import nfit_handle
from pmemd.config import NvdimmConfig

from .firmware import Firmware
from .health import Health
from .label_store import LabelStore
from .media import MediaErrors
from .notify import NotifyQueue
from .pmem_store import PmemStore
from .security import Security

slot_to_handle = nfit_handle  # one definition, shared with the NFIT and SSDT builders


@dataclass
class Root:
    """The NVDIMM root device (NFIT bus family): sees every DIMM, e.g. for ARS."""

    nvdimms: tuple[NvdimmConfig, ...]
    media: MediaErrors = field(default_factory=MediaErrors.create)
    pending_notifies: NotifyQueue = field(default_factory=NotifyQueue)
    """Notify values (0x81: new errors) for the transport to raise on the root and drain."""


@dataclass
class Dimm:
    """One NVDIMM (Intel family); `labels` is None when it has no label area."""

    config: NvdimmConfig
    labels: LabelStore | None
    health: Health = field(default_factory=Health)
    pending_notifies: NotifyQueue = field(default_factory=NotifyQueue)
    """Notify values (0x81: health changed) for the transport to raise on this DIMM and drain."""
    firmware: Firmware = field(default_factory=Firmware)  # Intel fns 12-16, 29, 30
    security: Security = field(default_factory=Security)
    pmem: PmemStore | None = None
    """Where security erases write; None: erasing functions are not offered."""


@dataclass
class IntelBus:
    """The root's Intel bus family (handle `INTEL_BUS_HANDLE`): firmware activation, bus-wide."""

    dimms: dict[int, Dimm]  # slot -> each Intel-family DIMM

    @property
    def firmware(self) -> list[Firmware]:
        return [d.firmware for d in self.dimms.values()]
