"""Simulated Xen hosts for tests: `Sim` (the hypervisor alone), `Host` (hypervisor, xenstored and
hvmloader in the test's own trio run) and `ProcessHost` (every part its own `pmemd` process).

Why two full hosts: `Host` keeps the simulator's state in reach (`host.hv`, `host.store`) and runs
the daemon as `serve_guest` in the test's trio run, so a test can look inside and make a step fail;
`ProcessHost` is what a real machine looks like — separate processes, killable, with logs — and has
a blocking API so one host can serve a whole module (module-scoped fixtures cannot be trio's).
The fixtures (`sim`, `sim_process`, `host`) live in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pmemd import config as configmod
from pmemd.daemon.dmacpi import Buffer
from pmemd.daemon.guest import Guest
from pmemd.daemon.serve import serve_guest
from pmemd.sim.client.device_model import SimDeviceModel
from pmemd.sim.hv_domain import Layout
from pmemd.sim.hvmloader import Hvmloader
from pmemd.sim.hypervisor import Hypervisor
from pmemd.toolstack import create_domain_keys, reserve_dm_acpi
from pmemd.xenstore import XenstoreClient, open_client
from pmemd.xenstored.server import Store
from tests.harness.config import MiB, guest_config, nvdimm, write_toml
from tests.harness.daemon import Daemon, LogWatcher, Simulator, pmemd, start_daemon, start_sim

GUEST = 5  # the domain `Host` has a guest-side xenstored socket for


def leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# -- the simulator alone ----------------------------------------------------------------------


@dataclass
class Sim:
    """The simulated hypervisor on `path`; `hv` is its state when it runs in this process."""

    path: Path
    hv: Hypervisor | None  # None when the simulator runs in another process
    clients: list[SimDeviceModel] = field(default_factory=list)

    async def dm(self, domid: int) -> SimDeviceModel:
        """A device-model connection, closed when the test ends."""
        client = await SimDeviceModel.connect(self.path, domid)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def create_domain(self, domid: int, *, vcpus: int = 1, lowmem: int = 16 * MiB, highmem: int = 0,
                            unpause: bool = True) -> None:
        ctl = await self.dm(domid)
        try:
            await ctl.request("domain_create", domid=domid, lowmem=lowmem, highmem=highmem,
                              mmio_hole=256 * MiB, vcpus=vcpus)
            if unpause:
                await ctl.request("domain_unpause", domid=domid)
        finally:
            await ctl.aclose()


# -- everything in the test's trio run --------------------------------------------------------


@dataclass
class InProcessDaemon:
    """`serve_guest` running in the test's trio run, as `pmemd run` would run it."""

    guest: Guest
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        """Cancel it (what SIGTERM does) and wait for its teardown."""
        self.scope.cancel()
        await self.done.wait()


@dataclass
class Host:
    """Hypervisor, xenstored (dom0's socket and one acting as domain GUEST) and hvmloader, in this
    trio run. It plays the toolstack too: `create_domain` does what `pmemd domain create` does,
    `unpause` what `pmemd domain unpause` does (so the simulated hvmloader runs)."""

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

    async def start_daemon(self, cfg: configmod.Config) -> InProcessDaemon:
        """`pmemd run` in this trio run; returns once the daemon reported started."""
        scope, done = trio.CancelScope(), trio.Event()

        async def run(task_status: trio.TaskStatus[Guest] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await serve_guest(cfg, self.hv_sock, task_status=task_status)
            finally:
                done.set()

        guest = await self.nursery.start(run)
        return InProcessDaemon(guest, scope, done)

    async def failed_daemon(self, cfg: configmod.Config) -> BaseException:
        """Run a daemon expected to fail during set-up; return the (leaf) exception."""
        try:
            await serve_guest(cfg, self.hv_sock)
        except Exception as e:
            return leaf(e)
        raise AssertionError("the daemon started")


# -- every part its own process ---------------------------------------------------------------


@dataclass
class ProcessHost:
    """`pmemd sim` on `workdir/hv.sock`, the daemons started on it, and the toolstack's commands.

    `guest_config` writes a guest's TOML (backing files in `workdir`); `start_guest` does what the
    toolstack does: `pmemd domain create`, `pmemd run` (until READY=1), `pmemd domain unpause`.
    """

    workdir: Path
    sim: Simulator | None = None
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.workdir / "hv.sock"

    @property
    def sim_log(self) -> LogWatcher | None:
        return self.sim.log if self.sim is not None else None

    def start(self) -> ProcessHost:
        self.sim = start_sim("--socket", str(self.socket))
        return self

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        if self.sim is not None:
            self.sim.close()

    def guest_config(self, domid: int, *, mode: str = "mmio", vcpus: int = 1,
                     nvdimms: Iterable[Mapping[str, Any]] = (), name: str | None = None) -> Path:
        """Write a guest's TOML; each NVDIMM's backing file is created (sparse) beside it."""
        path = self.workdir / f"{name or f'dom{domid}'}.toml"
        dimms = [nvdimm(self.workdir / f"{path.stem}-nv{i}.img", d["size"], **{k: v for k, v in d.items() if k != "size"})
                 for i, d in enumerate(nvdimms)]
        raw = guest_config(domid, self.socket, lowmem="16M", vcpus=vcpus, mode=mode,
                           qmp=self.workdir / f"dom{domid}.qmp", nvdimms=dimms)
        return write_toml(path, raw)

    def domain(self, action: str, config: Path) -> dict[str, Any]:
        proc = pmemd("domain", action, "--config", str(config))
        assert proc.returncode == 0, f"pmemd domain {action} failed: {proc.stderr}"
        return json.loads(proc.stdout)

    def start_daemon(self, config: Path) -> Daemon:
        """`pmemd run`, returned once it is ready (READY=1)."""
        daemon = start_daemon(self.workdir, "--config", str(config), name=f"{config.stem}-{len(self.daemons)}")
        self.daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    def start_guest(self, config: Path) -> Daemon:
        """The toolstack's sequence: create the domain paused, start its daemon, unpause."""
        self.domain("create", config)
        daemon = self.start_daemon(config)
        self.domain("unpause", config)
        return daemon

    def wait_server_destroyed(self, domid: int, since: int) -> None:
        """Until the simulator has dropped the ioreq server of a daemon that died."""
        assert self.sim_log is not None
        self.sim_log.wait_for("ioreq server destroyed", since=since, domid=domid)
