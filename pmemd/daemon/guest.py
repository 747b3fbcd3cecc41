"""The record the setup steps fill in, the step type, and `pmemd run`'s lifecycle options.

A leaf module: it imports only what the fields' types name, so every service can be typed
against it without importing the steps that build it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pmemd.config import Config

if TYPE_CHECKING:
    from pmemd.daemon.dmacpi import Publication
    from pmemd.daemon.dsm_effects import DsmEffects
    from pmemd.daemon.frontends.qemu_doorbell import DoorbellServer
    from pmemd.daemon.frontends.xen_page import DsmPageDevice
    from pmemd.daemon.security_service import SecurityService
    from pmemd.daemon.tables import Tables
    from pmemd.dsm.build import DsmHandlers
    from pmemd.dsm.label_store import LabelStore
    from pmemd.ioreq.server import IoreqServer
    from pmemd.process.depriv import DeprivPlan
    from pmemd.qmp.early import EarlyQmp
    from pmemd.qmp.server import QmpServer
    from pmemd.storage import MapReport
    from pmemd.storage.mirror import Mirror
    from pmemd.xen.api import DeviceModelHypervisor
    from pmemd.xenstore import XenstoreClient


@dataclass(frozen=True)
class RunOptions:
    """What `pmemd run`'s lifecycle flags ask of the daemon beyond its config."""

    depriv: DeprivPlan | None = None
    save: Path | None = None  # write device state here on a clean stop
    resume: Path | None = None  # load device state from here before serving
    paused: bool = False  # QEMU's -S: QMP says "prelaunch" and the ioreq server waits for `cont`
    early_qmp: EarlyQmp | None = None  # the QMP socket bound at exec (`pmemd.qmp.early`)


@dataclass
class Guest:
    """One guest as the daemon serves it; steps fill it in as they complete."""

    config: Config
    hypervisor: str  # `[xen] hypervisor`: the backend (`pmemd.xen.backends`) and its address
    nursery: trio.Nursery
    tables: Tables
    options: RunOptions = field(default_factory=RunOptions)  # `pmemd run`'s lifecycle flags
    hv: DeviceModelHypervisor | None = None
    xenstore: XenstoreClient | None = None  # [xen] xenstore's connection (an embedded one: in-process)
    labels: Mapping[int, LabelStore] = field(default_factory=dict)
    handlers: DsmHandlers | None = None  # the dispatcher and its devices (dsm-handlers)
    effects: DsmEffects | None = None  # notifies, vMCE poison, saved health (dsm-handlers)
    security: SecurityService | None = None  # security files and the overwriter (dsm-handlers)
    device: DsmPageDevice | None = None  # the Xen DSM page front end ...
    server: IoreqServer | None = None  # ... and the ioreq server carrying it
    doorbell: DoorbellServer | None = None  # [dsm] transport = "qemu" instead of `device`/`server`
    publication: Publication | None = None  # what "publish-tables" put in dm-acpi
    pmem_maps: dict[int, MapReport] = field(default_factory=dict)  # slot -> what "map-pmem" populated
    mirrors: dict[int, Mirror] = field(default_factory=dict)  # slot -> mirrored PMEM ([pmem] mode "mirrored")
    qmp: QmpServer | None = None  # while the "qmp" step is in
    completed: list[str] = field(default_factory=list)  # names of the steps set up, in order
    failed_step: str | None = None  # the setup step that failed (the state key's error-code)
    serving: bool = False  # every step is in and the guest may run: a stop from here on saves state


Step = Callable[[Guest], contextlib.AbstractAsyncContextManager[None]]
