"""The per-guest daemon: label stores, the DSM dispatcher, and the ioreq server for the page.

`serve_guest` is the daemon's whole job for one domain, as a trio task that reports
started only once the ioreq server is enabled; cancelling it tears everything down in
reverse order (ioreq server, hypervisor connection, label stores).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog
import trio

from acpi.dsm_buffer import PAGE_SIZE
from pmemd.config import Config
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.label_file import open_label_stores
from pmemd.dsm_device import DsmPageDevice
from pmemd.ioreq.server import IoreqServer
from pmemd.xen.sim_client import SimDeviceModel

log = structlog.get_logger("pmemd.daemon")


@dataclass
class Running:
    """What a running daemon exposes to its supervisor (statistics, tests)."""

    config: Config
    server: IoreqServer
    device: DsmPageDevice


async def serve_guest(
    config: Config,
    hypervisor_socket: str,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve domain `config.domid`'s NVDIMM `_DSM` interface until cancelled."""
    with contextlib.ExitStack() as stack:
        labels = open_label_stores(config, stack)
        dispatcher = build_dispatcher(config, labels)
        hv = await SimDeviceModel.connect(hypervisor_socket, config.domid)
        try:
            ram_page = None
            if config.dsm.mode == "ram":
                ram_page = (await hv.map_foreign(config.dsm.page // PAGE_SIZE, 1))[:PAGE_SIZE]
            device = DsmPageDevice(config.dsm, dispatcher.dispatch, ram_page)
            server = IoreqServer(hv, device, device.io_ranges())
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                log.info("running", mode=config.dsm.mode, page=hex(config.dsm.page),
                         nvdimms=len(config.nvdimms), labels=sorted(labels))
                task_status.started(Running(config, server, device))
        finally:
            with trio.CancelScope(shield=True):
                await hv.aclose()
