"""Shared fixtures: a simulated hypervisor, in-process ("embedded") or in its own process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio

from pmemd.sim.client.device_model import SimDeviceModel
from pmemd.sim.hypervisor import Hypervisor, serve_hypervisor

MiB = 1 << 20


@dataclass
class Sim:
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


@pytest.fixture
async def sim(nursery: trio.Nursery, tmp_path: Path):
    """The simulator served in this trio run; `sim.hv` is its state, for inspection."""
    path = tmp_path / "hv.sock"
    hv = await nursery.start(partial(serve_hypervisor, path))
    sim = Sim(path, hv)
    yield sim
    await sim.aclose()


@pytest.fixture
async def sim_process(tmp_path: Path):
    """The simulator in its own process (`python -m pmemd.sim.hypervisor`), ready to use."""
    path = tmp_path / "hv.sock"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pmemd.sim.hypervisor", str(path)], stdout=subprocess.PIPE
    )
    try:
        buf = b""
        while b"ready\n" not in buf:
            chunk = await proc.stdout.receive_some()
            assert chunk, "simulator exited before it was ready"
            buf += chunk
        sim = Sim(path, None)
        yield sim
        await sim.aclose()
    finally:
        proc.terminate()
        await proc.wait()
