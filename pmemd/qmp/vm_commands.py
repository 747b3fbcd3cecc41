"""The QEMU commands libxl sends a device model, with QEMU's reply shapes.

    query-status             {"running", "status"}: prelaunch | running | paused | shutdown
    query-version            QEMU's VersionInfo; `qemu` is the QMP dialect we speak (see below)
    query-commands           [{"name"}], every command in the table
    stop / cont              disable / enable the ioreq server; STOP / RESUME events
    quit                     reply, SHUTDOWN event, then the daemon exits as on SIGTERM
    query-memory-devices     [{"type": "nvdimm", "data": PCDIMMDeviceInfo}] (qapi/machine.json)
    xen-save-devices-state   {filename, live?}: write the device-state save file
    xen-load-devices-state   {filename}: load one; refused while running (as QEMU)
Reference: xen-ioreq-vnvdimm.md §3 (what libxl sends and expects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from .control import GuestControl, RunState
from .early import PACKAGE, QEMU_DIALECT, version_info  # noqa: F401  (the greeting's, shared)
from .errors import QmpError
from .registry import COMMANDS, command
from .schema import Param

log = structlog.get_logger("pmemd.qmp")


@command("query-status")
def query_status(ctl: GuestControl) -> dict[str, Any]:
    """The run state: `running` only while the ioreq server serves the guest."""
    return {"running": ctl.runstate is RunState.RUNNING, "status": ctl.runstate.value}


@command("query-version")
def query_version(ctl: GuestControl) -> dict[str, Any]:
    """The QMP dialect (QEMU version) and the real package."""
    return version_info()


@command("query-commands")
def query_commands(ctl: GuestControl) -> list[dict[str, str]]:
    """Every command this server accepts."""
    return [{"name": name} for name in ["qmp_capabilities", *sorted(COMMANDS)]]


@command("stop")
async def stop(ctl: GuestControl) -> dict[str, Any]:
    """Stop serving the guest (ioreq server disabled); STOP when it was running."""
    if ctl.runstate is RunState.RUNNING:
        await ctl.set_runstate(RunState.PAUSED)
        ctl.emit("STOP", None)
    return {}


@command("cont")
async def cont(ctl: GuestControl) -> dict[str, Any]:
    """Serve the guest again (ioreq server enabled); RESUME when it was not running."""
    if ctl.runstate is RunState.SHUTDOWN:
        raise QmpError("Resetting the Virtual Machine is required")
    if ctl.runstate is not RunState.RUNNING:
        await ctl.set_runstate(RunState.RUNNING)
        ctl.emit("RESUME", None)
    return {}


@command("quit")
def quit_(ctl: GuestControl) -> dict[str, Any]:
    """End the daemon: the reply goes out first, then the SHUTDOWN event, then a clean teardown."""
    ctl.runstate = RunState.SHUTDOWN
    ctl.request_quit()  # the server sends SHUTDOWN after this reply (QEMU's order)
    return {}


@command("query-memory-devices")
def query_memory_devices(ctl: GuestControl) -> list[dict[str, Any]]:
    """Each NVDIMM as QEMU's MemoryDeviceInfo `nvdimm` branch (size excludes the label area)."""
    return [
        {
            "type": "nvdimm",
            "data": {
                "id": f"nvdimm{d.slot}",
                "addr": d.address,
                "size": d.pmem_size,
                "slot": d.slot,
                "node": d.node,
                "memdev": f"/objects/memnvdimm{d.slot}",
                "hotplugged": False,
                "hotpluggable": False,
            },
        }
        for d in sorted(ctl.config.nvdimms, key=lambda d: d.slot)
    ]


@command("xen-save-devices-state", Param("filename", "path"), Param("live", "bool", required=False))
def xen_save_devices_state(ctl: GuestControl, filename: str, live: bool = False) -> dict[str, Any]:
    """Write the device state (poison, health, ARS) to `filename`; labels stay in the backing files."""
    try:
        size = ctl.state_files.save(Path(filename))
    except OSError as e:
        raise QmpError(f"failed to save device state to '{filename}': {e.strerror or e}") from None
    log.info("device state saved", file=filename, bytes=size, live=live)
    return {}


@command("xen-load-devices-state", Param("filename", "path"))
def xen_load_devices_state(ctl: GuestControl, filename: str) -> dict[str, Any]:
    """Load device state saved by xen-save-devices-state; the guest must not be running."""
    if ctl.runstate is RunState.RUNNING:
        raise QmpError("Cannot update device state while vm is running")
    try:
        version, saved_domid = ctl.state_files.load(Path(filename))
    except OSError as e:
        raise QmpError(f"failed to read device state from '{filename}': {e.strerror or e}") from None
    except ValueError as e:  # the save file's own refusals (SaveFileError)
        raise QmpError(f"'{filename}': {e}") from None
    ctl.runstate = RunState.PAUSED
    log.info("device state loaded", file=filename, version=version, saved_domid=saved_domid)
    return {}
