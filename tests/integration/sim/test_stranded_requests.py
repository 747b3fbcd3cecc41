"""`pmemd release`'s second half: requests a dead device model left in its servers are completed."""

from __future__ import annotations

import trio

from pmemd.ioreq import abi
from pmemd.ioreq.stranded import complete_stranded
from tests.harness.sim_dm import MMIO_BASE, DoubleDM, mmio


async def strand(sim, nursery, request) -> tuple[DoubleDM, list[tuple[int, bool]], trio.Event]:  # type: ignore[no-untyped-def]
    """A guest access that reached a server whose owner then died (its ports closed, nothing served)."""
    await sim.create_domain(1)
    dm = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    results: list[tuple[int, bool]] = []
    done = trio.Event()

    async def guest() -> None:
        results.append(await sim.hv.domain(1).access(0, request))
        done.set()

    nursery.start_soon(guest)
    await dm.evtchn.pending()
    for port in dm.ports:  # the process is gone: the kernel unbinds its ports
        await dm.evtchn.unbind(port)
    await dm.dm.set_ioreq_server_state(dm.server_id, False)
    return dm, results, done


async def test_a_read_left_ready_completes_all_ones_and_the_vcpu_goes_on(sim, nursery):
    dm, results, done = await strand(sim, nursery, mmio(MMIO_BASE + 8, 4))
    assert await complete_stranded(dm.dm, dm.server_id) == 1
    with trio.fail_after(5):
        await done.wait()
    assert results == [(0xFFFF_FFFF, True)]


async def test_a_write_the_dead_owner_had_taken_completes_without_data(sim, nursery):
    dm, results, done = await strand(sim, nursery, mmio(MMIO_BASE, 8, read=False, data=0x1234))
    dm.set_state(0, abi.STATE_IOREQ_INPROCESS)
    assert await complete_stranded(dm.dm, dm.server_id) == 1
    with trio.fail_after(5):
        await done.wait()
    assert results == [(0x1234, True)]


async def test_a_server_with_nothing_waiting_is_left_alone(sim):
    await sim.create_domain(1)
    dm = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    assert await complete_stranded(dm.dm, dm.server_id) == 0
    assert dm.state(0) == abi.STATE_IOREQ_NONE
