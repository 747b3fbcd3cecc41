"""The platform page: GPEs and vMCE poison written by the device model, seen by the simulated guest."""

from __future__ import annotations

import pytest
import trio

from pmemd.ioreq.abi import IOREQ_READ, IOREQ_WRITE
from pmemd.sim import platform_page, wire
from pmemd.sim.client.vcpu import GuestConnection
from pmemd.sim.hv_platform import EHWPOISON
from pmemd.xen.errors import HypervisorError

NVDIMM = 0x1_0000_0000  # beyond guest RAM: a guest read goes through the simulator


def fresh_page() -> memoryview:
    buf = memoryview(bytearray(platform_page.PAGE_BYTES))
    platform_page.initialise(buf)
    return buf


def test_raised_gpes_are_taken_once_and_cleared() -> None:
    buf = fresh_page()
    writer, reader = platform_page.PlatformWriter(buf), platform_page.PlatformReader(buf)
    writer.raise_gpe(4)
    writer.raise_gpe(4)
    writer.raise_gpe(7)
    assert reader.take_gpes() == [4, 7]
    assert reader.take_gpes() == []


def test_gpe_outside_the_block_is_refused() -> None:
    with pytest.raises(platform_page.PlatformPageError):
        platform_page.PlatformWriter(fresh_page()).raise_gpe(platform_page.GPE_COUNT)


def test_poison_lookup_finds_overlaps_only_and_a_rewrite_replaces_the_table() -> None:
    buf = fresh_page()
    writer, reader = platform_page.PlatformWriter(buf), platform_page.PlatformReader(buf)
    writer.set_poison([(0x1000, 0x100), (0x3000, 0x200)])
    assert reader.poisoned(0x1000, 8) == (0x1000, 0x100)
    assert reader.poisoned(0x0FF8, 8) is None  # ends where the poison starts
    assert reader.poisoned(0x10F8, 16) == (0x1000, 0x100)
    assert reader.poisoned(0x1100, 0x1F00) is None  # between the ranges
    assert reader.poisoned(0x2000, 0x1001) == (0x3000, 0x200)
    writer.set_poison([(0x3000, 0x200)])
    assert reader.ranges() == [(0x3000, 0x200)]
    assert reader.poisoned(0x1000, 8) is None


def test_reader_refuses_a_table_that_never_settles() -> None:
    buf = fresh_page()
    buf[platform_page.SEQ_OFFSET] = 1  # a writer that died mid-rewrite
    with pytest.raises(platform_page.PlatformPageError):
        platform_page.PlatformReader(buf).poisoned(0, 8)


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
