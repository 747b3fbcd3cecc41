"""A simulated host in this trio run: hypervisor, xenstored (dom0 and guest sockets), hvmloader.

`host` is a pytest fixture (import it into a test module to use it). `Host` plays the
toolstack too: `create_domain` does what `pmemd domain create` does, `unpause` what
`pmemd domain unpause` does (so the simulated hvmloader runs), and `start_daemon` runs
`serve_guest` in the test's trio run with a handle to stop it cleanly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from pmemd import config as configmod
from pmemd.daemon.dmacpi import Buffer
from pmemd.daemon.guest import Guest
from pmemd.daemon.serve import serve_guest
from pmemd.sim.client.device_model import SimDeviceModel
from pmemd.sim.hv_domain import Layout
from pmemd.sim.hvmloader import Hvmloader, attach
from pmemd.sim.hypervisor import Hypervisor, serve_hypervisor
from pmemd.toolstack import create_domain_keys, reserve_dm_acpi
from pmemd.xenstore import XenstoreClient, open_client
from pmemd.xenstored.server import Store, serve_xenstored
from tests.harness.config import guest_config, nvdimm

GUEST = 5
XENSTORE_TOOLS = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-chmod", "xenstore-watch")


def leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def require_xenstore_tools() -> None:
    missing = [t for t in XENSTORE_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"Debian xenstore-utils not installed (missing {', '.join(missing)}; ./dev test installs it)")


@dataclass
class Daemon:
    guest: Guest
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        """Cancel it (what SIGTERM does) and wait for its teardown."""
        self.scope.cancel()
        await self.done.wait()


@dataclass
class Host:
    dir: Path
    hv: Hypervisor
    store: Store
    hvmloader: Hvmloader
    nursery: trio.Nursery

    @property
    def hv_sock(self) -> str:
        return str(self.dir / "hv")

    @property
    def xs_sock(self) -> str:
        return str(self.dir / "xs")

    @property
    def guest_xs_sock(self) -> str:
        """Connections on this socket act as domain GUEST (the guest's ring, on a real host)."""
        return str(self.dir / "xs-guest")

    @property
    def acpi_out(self) -> Path:
        return self.dir / "acpi"

    def config(self, *, nvdimms: int = 2, domid: int = GUEST, **xen: Any) -> configmod.Config:
        dimms = [nvdimm(self.dir / f"nv{i}.img", "4M", slot=i) for i in range(nvdimms)]
        raw = guest_config(domid, self.hv_sock, vcpus=1, xenstore=self.xs_sock, qmp=self.dir / "qmp", nvdimms=dimms)
        raw["xen"].update(xen)
        return configmod.from_mapping(raw, base_dir=self.dir)

    async def client(self, path: str | None = None) -> XenstoreClient:
        """A xenstore connection (dom0's unless `path` says otherwise), closed with the test."""

        async def hold(task_status: trio.TaskStatus[XenstoreClient] = trio.TASK_STATUS_IGNORED) -> None:
            async with open_client(path or self.xs_sock) as client:
                task_status.started(client)
                await trio.sleep_forever()

        return await self.nursery.start(hold)

    async def hv_client(self, cfg: configmod.Config) -> SimDeviceModel:
        """A device-model connection to the simulator for `cfg.domid`, closed with the test."""

        async def hold(task_status: trio.TaskStatus[SimDeviceModel] = trio.TASK_STATUS_IGNORED) -> None:
            dm = await SimDeviceModel.connect(self.hv_sock, cfg.domid)
            try:
                task_status.started(dm)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await dm.aclose()

        return await self.nursery.start(hold)

    async def create_domain(self, cfg: configmod.Config, buffer: Buffer | None = None) -> Buffer:
        """`pmemd domain create`: the paused domain and its xenstore keys (dm-acpi buffer)."""
        g = cfg.guest
        self.hv.create_domain(cfg.domid, Layout(g.lowmem, g.highmem, g.mmio_hole, g.vcpus))
        buffer = buffer or reserve_dm_acpi(cfg)
        await create_domain_keys(await self.client(), cfg, buffer)
        return buffer

    def unpause(self, domid: int = GUEST) -> None:
        """`pmemd domain unpause`: hvmloader runs at this first unpause."""
        self.hv.unpause_domain(self.hv.domain(domid))

    async def start_daemon(self, cfg: configmod.Config) -> Daemon:
        """`pmemd run` in this trio run; returns once the daemon reported started."""
        scope, done = trio.CancelScope(), trio.Event()

        async def run(task_status: trio.TaskStatus[Guest] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await serve_guest(cfg, self.hv_sock, task_status=task_status)
            finally:
                done.set()

        guest = await self.nursery.start(run)
        return Daemon(guest, scope, done)

    async def failed_daemon(self, cfg: configmod.Config) -> BaseException:
        """Run a daemon expected to fail during set-up; return the (leaf) exception."""
        try:
            await serve_guest(cfg, self.hv_sock)
        except Exception as e:
            return leaf(e)
        raise AssertionError("the daemon started")


@pytest.fixture
async def host(nursery: trio.Nursery) -> AsyncIterator[Host]:
    directory = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))  # short: Unix socket paths
    try:
        hv = await nursery.start(partial(serve_hypervisor, str(directory / "hv")))
        store = await nursery.start(partial(serve_xenstored, str(directory / "xs")))
        await nursery.start(partial(serve_xenstored, str(directory / "xs-guest"), store=store, domid=GUEST))
        h = Host(directory, hv, store, attach(hv, store, directory / "acpi"), nursery)
        yield h
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def tool_env(socket: str) -> dict[str, str]:
    return {**os.environ, "XENSTORED_PATH": socket}


async def tool(socket: str, *argv: str, check: bool = True) -> trio.Process:
    """Run one Debian xenstore tool against `socket`."""
    with trio.fail_after(10):
        return await trio.run_process(list(argv), env=tool_env(socket), capture_stdout=True,
                                      capture_stderr=True, check=check)
