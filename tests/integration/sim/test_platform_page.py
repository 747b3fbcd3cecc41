"""The platform page through the simulator: GPEs and vMCE poison written by the device model, seen by the
simulated guest."""

from __future__ import annotations

import pytest
import trio

from pmemd.ioreq.abi import IOREQ_READ, IOREQ_WRITE
from pmemd.sim import wire
from pmemd.sim.client.vcpu import GuestConnection
from pmemd.sim.hv_platform import EHWPOISON
from pmemd.xen.errors import HypervisorError

NVDIMM = 0x1_0000_0000  # beyond guest RAM: a guest read goes through the simulator


async def test_guest_read_of_published_poison_takes_a_machine_check(sim) -> None:
    await sim.create_domain(5)
    dm = await sim.dm(5)
    platform = await dm.open_platform()
    platform.set_poison([(NVDIMM + 0x100, 0x100)])

    def guest() -> tuple[int, bool]:
        with GuestConnection(sim.path, 5) as vcpu:
            with pytest.raises(HypervisorError) as caught:
                vcpu.access(wire.SPACE_MMIO, NVDIMM + 0x1F8, 8, IOREQ_READ)
            beside = vcpu.access(wire.SPACE_MMIO, NVDIMM + 0x200, 8, IOREQ_READ)  # next to the poison
            vcpu.access(wire.SPACE_MMIO, NVDIMM + 0x100, 8, IOREQ_WRITE, 1)  # stores do not consume poison
            platform.set_poison([])
            vcpu.access(wire.SPACE_MMIO, NVDIMM + 0x1F8, 8, IOREQ_READ)  # cleared: reads again
            return caught.value.errno, beside.trapped

    assert await trio.to_thread.run_sync(guest) == (EHWPOISON, False)
    platform.close()


async def test_gpe_raised_by_the_device_model_is_pending_for_the_guest_once(sim) -> None:
    await sim.create_domain(6)
    dm = await sim.dm(6)
    platform = await dm.open_platform()
    platform.raise_gpe(4)
    taken = await dm.request("gpe_take", domid=6)
    again = await dm.request("gpe_take", domid=6)
    assert (taken["gpes"], again["gpes"]) == ([4], [])
    platform.close()
