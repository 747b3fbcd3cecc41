"""What QMP commands act on: one guest's NVDIMM devices, its run state, and the daemon's hooks.

The shell builds one `GuestControl` per guest (the daemon's "qmp" step) and hands it to
every command. Commands are plain functions of it, so tests can drive them without sockets.

Run states follow QEMU's (qapi/run-state.json) as libxl reads them: `prelaunch` before the
first `cont` when started paused (QEMU's -S), `running` while the ioreq server is enabled,
`paused` after `stop` or a device-state load, `shutdown` once `quit` was accepted. Only
`running` serves the guest: in every other state the ioreq server is disabled, as QEMU's
Xen glue disables its server on every VM state change away from running.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pmemd.config import Config
from pmemd.dsm.devices import Dimm, Root
from pmemd.dsm.label_store import LabelStore
from pmemd.xen.errors import HypervisorError, ProtocolError

from .errors import QmpError, device_not_found


class RunState(str, enum.Enum):
    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"


class DeviceStateFiles(Protocol):
    """Where `xen-save-devices-state`/`xen-load-devices-state` write and read (the daemon's save file)."""

    def save(self, path: Path) -> int:
        """Write the devices' state to `path`; returns its size. Errors: OSError."""

    def load(self, path: Path) -> tuple[int, int]:
        """Load `path` into the devices; returns (format version, saved domid).
        Errors: OSError, ValueError (a file that cannot be loaded; nothing changed)."""


@dataclass
class GuestControl:
    """The guest as its QMP commands see it."""

    config: Config
    root: Root
    dimms: Mapping[int, Dimm]  # slot → DIMM
    labels: Mapping[int, LabelStore]  # slot → label area (DIMMs with one)
    set_serving: Callable[[bool], Awaitable[None]]  # enable/disable the ioreq server
    emit: Callable[[str, Mapping[str, Any] | None], None]  # broadcast an event to every client
    request_quit: Callable[[], None]  # end the daemon as SIGTERM would, after the reply is sent
    state_files: DeviceStateFiles
    runstate: RunState = RunState.RUNNING
    save_security: Callable[[int], None] | None = None  # rewrite a slot's security file (after a reset)

    def dimm(self, slot: int) -> Dimm:
        """The DIMM in `slot`. Errors: DeviceNotFound."""
        dimm = self.dimms.get(slot)
        if dimm is None:
            raise device_not_found(f"NVDIMM slot {slot} not found (slots: {sorted(self.dimms)})")
        return dimm

    async def set_runstate(self, state: RunState) -> None:
        """Move to `state`, enabling the ioreq server exactly when entering `running`."""
        serving = state is RunState.RUNNING
        if serving != (self.runstate is RunState.RUNNING):
            try:
                await self.set_serving(serving)
            except (HypervisorError, ProtocolError, OSError) as e:  # refused: report, keep the old state
                raise QmpError(f"cannot {'enable' if serving else 'disable'} the ioreq server: {e}") from e
        self.runstate = state
