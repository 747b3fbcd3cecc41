"""The simulated hypervisor holds Xen's rules: domains, DMOP limits, routing, the slot state machine."""

from __future__ import annotations

import errno
import struct

import pytest
import trio
import trio.testing

from pmemd.ioreq import abi
from pmemd.ioreq.device import IoRange
from pmemd.ioreq.server import IoreqServer
from pmemd.sim.client.control import DomainControl
from pmemd.sim.client.vcpu import GuestConnection
from pmemd.sim.errors import DomainDead
from pmemd.xen.errors import DomainCrashed, HypervisorError
from tests.harness.sim_dm import MMIO_BASE, DoubleDM, mmio


class Echo:
    """Reads return the address; writes are recorded."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        return addr

    def port_read(self, port: int, size: int) -> int:
        return port

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.writes.append((addr, size, value))

    port_write = mmio_write


async def serve_echo(nursery: trio.Nursery, sim, domid: int, ranges: list[IoRange]) -> IoreqServer:  # type: ignore[no-untyped-def]
    server = IoreqServer(await sim.dm(domid), Echo(), ranges)
    await nursery.start(server.run)
    return server


# -- domains -------------------------------------------------------------------------------

async def test_domain_is_created_paused_and_unpause_runs_it(sim_process):
    def scenario() -> tuple[str, str]:
        with DomainControl(sim_process.path) as ctl:
            created = ctl.create(3, lowmem=16 << 20, vcpus=2).state
            ctl.unpause(3)
            return created, ctl.info(3).state
    assert await trio.to_thread.run_sync(scenario) == ("paused", "running")


async def test_creating_an_existing_domain_is_refused_with_eexist(sim):
    await sim.create_domain(1)
    with pytest.raises(HypervisorError) as info:
        await sim.create_domain(1)
    assert info.value.errno == errno.EEXIST


async def test_requests_for_an_unknown_domain_fail_with_esrch(sim):
    dm = await sim.dm(42)
    with pytest.raises(HypervisorError) as info:
        await dm.create_ioreq_server()
    assert info.value.errno == errno.ESRCH


async def test_guest_access_on_a_paused_domain_waits_for_unpause(sim):
    await sim.create_domain(1, unpause=False)
    dom = sim.hv.domain(1)
    results = []

    async def guest() -> None:
        results.append(await dom.access(0, mmio(0x1000)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guest)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        dom.unpause()
    assert results == [(0, False)]


async def test_ram_accesses_go_to_guest_memory_without_trapping(sim_process):
    await sim_process.create_domain(1, highmem=1 << 20)

    def scenario() -> tuple[int, bytes, int]:
        with GuestConnection(sim_process.path, 1) as g:
            g.write_memory(0x2000, b"\x11\x22\x33\x44")
            g.mmio_write((1 << 32) + 8, 8, 0x0102030405060708)
            return g.mmio_read(0x2000, 4), g.read_memory((1 << 32) + 8, 8), g.trapped
    value, high, trapped = await trio.to_thread.run_sync(scenario)
    assert value == 0x44332211 and high == bytes.fromhex("0807060504030201") and trapped == 0


# -- DMOP limits and ranges --------------------------------------------------------------

async def test_ninth_ioreq_server_is_refused_with_enospc(sim):
    await sim.create_domain(1)
    dm = await sim.dm(1)
    ids = [await dm.create_ioreq_server() for _ in range(8)]
    with pytest.raises(HypervisorError) as info:
        await dm.create_ioreq_server()
    assert sorted(ids) == list(range(8)) and info.value.errno == errno.ENOSPC


async def test_257th_range_of_one_type_is_refused_but_the_other_type_has_its_own_limit(sim):
    await sim.create_domain(1)
    dm = await sim.dm(1)
    sid = await dm.create_ioreq_server()
    for i in range(256):  # non-adjacent, so Xen's rangeset cannot merge them
        await dm.map_io_range(sid, True, MMIO_BASE + i * 0x2000, MMIO_BASE + i * 0x2000 + 0xFFF)
    with pytest.raises(HypervisorError) as info:
        await dm.map_io_range(sid, True, MMIO_BASE + 256 * 0x2000, MMIO_BASE + 256 * 0x2000 + 0xFFF)
    await dm.map_io_range(sid, False, 0x100, 0x103)
    assert info.value.errno == errno.ENOMEM


async def test_overlapping_claims_between_servers_are_refused(sim):
    await sim.create_domain(1)
    dm = await sim.dm(1)
    a, b = await dm.create_ioreq_server(), await dm.create_ioreq_server()
    await dm.map_io_range(a, True, MMIO_BASE, MMIO_BASE + 0xFFF)
    with pytest.raises(HypervisorError) as info:
        await dm.map_io_range(b, True, MMIO_BASE + 0xFFF, MMIO_BASE + 0x1FFF)
    assert info.value.errno == errno.EEXIST


async def test_unmapping_a_range_that_is_not_mapped_fails_with_enoent(sim):
    await sim.create_domain(1)
    dm = await sim.dm(1)
    sid = await dm.create_ioreq_server()
    with pytest.raises(HypervisorError) as info:
        await dm.unmap_io_range(sid, True, MMIO_BASE, MMIO_BASE + 3)
    assert info.value.errno == errno.ENOENT


async def test_only_the_creator_may_map_the_ioreq_page(sim):
    await sim.create_domain(1)
    creator, other = await sim.dm(1), await sim.dm(1)
    sid = await creator.create_ioreq_server()
    with pytest.raises(HypervisorError) as info:
        await other.map_ioreq_page(sid)
    assert info.value.errno == errno.EPERM


async def test_range_end_is_inclusive(sim, nursery):
    await sim.create_domain(1)
    await serve_echo(nursery, sim, 1, [IoRange(True, MMIO_BASE, MMIO_BASE + 7)])
    assert await sim.hv.domain(1).access(0, mmio(MMIO_BASE + 4, 4)) == (MMIO_BASE + 4, True)


# -- routing ---------------------------------------------------------------------------------

async def test_unclaimed_reads_return_all_ones_and_writes_are_dropped(sim_process):
    await sim_process.create_domain(1)

    def scenario() -> tuple[int, int, int]:
        with GuestConnection(sim_process.path, 1) as g:
            g.mmio_write(MMIO_BASE, 4, 0)
            return g.mmio_read(MMIO_BASE, 4), g.port_read(0x80, 2), g.trapped
    assert await trio.to_thread.run_sync(scenario) == (0xFFFFFFFF, 0xFFFF, 0)


async def test_access_partially_inside_a_claimed_range_goes_unclaimed(sim, nursery):
    await sim.create_domain(1)
    server = await serve_echo(nursery, sim, 1, [IoRange(True, MMIO_BASE, MMIO_BASE + 0xFFF)])
    result = await sim.hv.domain(1).access(0, mmio(MMIO_BASE + 0xFFC, 8))
    assert result == (0xFFFF_FFFF_FFFF_FFFF, False) and server.statistics().served == 0


async def test_disabled_server_gets_no_accesses(sim):
    await sim.create_domain(1)
    dm = await sim.dm(1)
    sid = await dm.create_ioreq_server()
    await dm.map_io_range(sid, True, MMIO_BASE, MMIO_BASE + 0xFFF)
    assert await sim.hv.domain(1).access(0, mmio(MMIO_BASE)) == (0xFFFFFFFF, False)


async def test_guest_connection_counts_accesses_that_trapped(sim_process, nursery):
    await sim_process.create_domain(1)
    await serve_echo(nursery, sim_process, 1, [IoRange(True, MMIO_BASE, MMIO_BASE + 0xFFF)])

    def scenario() -> tuple[int, int, int]:
        with GuestConnection(sim_process.path, 1) as g:
            value = g.mmio_read(MMIO_BASE + 0x10, 4)
            g.mmio_read(0x1000, 4)  # RAM
            return value, g.accesses, g.trapped
    assert await trio.to_thread.run_sync(scenario) == (MMIO_BASE + 0x10, 2, 1)


async def test_eight_vcpus_in_flight_at_once_all_complete_uncrossed(sim_process):
    await sim_process.create_domain(1, vcpus=8)
    dm = await DoubleDM.start(sim_process, 1, 8, (MMIO_BASE, MMIO_BASE + 0xFFF))
    vcpu_of = {port: v for v, port in enumerate(dm.ports)}

    def guest(v: int) -> int:
        with GuestConnection(sim_process.path, 1, v) as g:
            return g.mmio_read(MMIO_BASE + 8 * v, 8)

    results: dict[int, int] = {}

    async def run_guest(v: int) -> None:
        results[v] = await trio.to_thread.run_sync(guest, v)

    async with trio.open_nursery() as nursery:
        for v in range(8):
            nursery.start_soon(run_guest, v)
        held: set[int] = set()
        while len(held) < 8:  # hold every request until all eight are in their slots
            held.update(vcpu_of[p] for p in await dm.evtchn.pending())
        assert all(dm.state(v) == abi.STATE_IOREQ_READY for v in range(8))
        for v in range(8):
            req = dm.slot(v)
            dm.set_state(v, abi.STATE_IOREQ_INPROCESS)
            struct.pack_into("<Q", dm.page, v * 32 + abi.DATA_OFFSET, (req.addr << 8) | v)
            dm.set_state(v, abi.STATE_IORESP_READY)
            dm.evtchn.notify(dm.ports[v])
    assert results == {v: ((MMIO_BASE + 8 * v) << 8) | v for v in range(8)}


# -- the state machine -------------------------------------------------------------------------

async def run_guest_expecting_crash(path, domid: int) -> None:  # type: ignore[no-untyped-def]
    def scenario() -> None:
        with GuestConnection(path, domid) as g:
            g.mmio_read(MMIO_BASE, 4)
    with pytest.raises(DomainCrashed):
        await trio.to_thread.run_sync(scenario)


async def misbehave_and_check_crash(sim, misbehave) -> str:  # type: ignore[no-untyped-def]
    """Domain 1 gets a misbehaving device model, domain 2 a good one; return 1's crash reason."""
    await sim.create_domain(1)
    await sim.create_domain(2)
    bad = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    async with trio.open_nursery() as nursery:
        await serve_echo(nursery, sim, 2, [IoRange(True, MMIO_BASE, MMIO_BASE + 0xFFF)])
        async with trio.open_nursery() as guests:
            guests.start_soon(run_guest_expecting_crash, sim.path, 1)
            await bad.evtchn.pending()
            misbehave(bad)
        assert (await bad.dm.domain_info()).state == "crashed"

        def other_guest() -> int:
            with GuestConnection(sim.path, 2) as g:
                return g.mmio_read(MMIO_BASE + 4, 4)
        assert await trio.to_thread.run_sync(other_guest) == MMIO_BASE + 4
        nursery.cancel_scope.cancel()
    return (await bad.dm.domain_info()).crash_reason or ""


async def test_backwards_state_crashes_the_domain_and_the_sim_serves_others(sim_process):
    def backwards(dm: DoubleDM) -> None:  # READY -> NONE: the slot handed back unserved
        dm.set_state(0, abi.STATE_IOREQ_NONE)
        dm.evtchn.notify(dm.ports[0])
    reason = await misbehave_and_check_crash(sim_process, backwards)
    assert "1 -> 0" in reason


async def test_unknown_state_crashes_the_domain(sim_process):
    def unknown(dm: DoubleDM) -> None:
        dm.set_state(0, 7)
        dm.evtchn.notify(dm.ports[0])
    assert "1 -> 7" in await misbehave_and_check_crash(sim_process, unknown)


async def test_bad_event_channel_in_the_slot_crashes_the_domain(sim_process):
    await sim_process.create_domain(1)
    dm = await DoubleDM.start(sim_process, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    struct.pack_into("<I", dm.page, abi.VP_EPORT_OFFSET, 999)
    await run_guest_expecting_crash(sim_process.path, 1)
    info = await dm.dm.domain_info()
    assert info.state == "crashed" and "bad event channel 999" in (info.crash_reason or "")


async def test_spurious_notification_keeps_the_vcpu_waiting(sim):
    await sim.create_domain(1)
    dm = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    results = []

    async def guest() -> None:
        results.append(await sim.hv.domain(1).access(0, mmio(MMIO_BASE)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guest)
        await dm.evtchn.pending()
        dm.evtchn.notify(dm.ports[0])  # still READY: Xen keeps waiting
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        dm.set_state(0, abi.STATE_IORESP_READY)
        struct.pack_into("<Q", dm.page, abi.DATA_OFFSET, 5)
        dm.evtchn.notify(dm.ports[0])
    assert results == [(5, True)] and dm.state(0) == abi.STATE_IOREQ_NONE


# -- shutdown and destroy ------------------------------------------------------------------------

async def test_shutdown_request_is_recorded_and_fails_pending_accesses(sim):
    await sim.create_domain(1)
    dm = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    async with trio.open_nursery() as nursery:
        async def guest() -> None:
            with pytest.raises(DomainDead):
                await sim.hv.domain(1).access(0, mmio(MMIO_BASE))
        nursery.start_soon(guest)
        await dm.evtchn.pending()
        await dm.dm.shutdown(0)
    info = await dm.dm.domain_info()
    assert (info.state, info.shutdown_reason) == ("shutdown", 0)


async def test_destroy_releases_servers_ports_and_fails_pending_accesses(sim):
    await sim.create_domain(1)
    dm = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    dom = sim.hv.domain(1)
    async with trio.open_nursery() as nursery:
        async def guest() -> None:
            with pytest.raises(DomainDead):
                await dom.access(0, mmio(MMIO_BASE))
        nursery.start_soon(guest)
        await dm.evtchn.pending()
        await dm.dm.request("domain_destroy", domid=1)
    info = await dm.dm.domain_info()
    assert info.state == "destroyed" and info.ioreq_servers == ()
    assert dom.servers == {} and dom.ports == {} and dom.ram.map.closed
    assert not any(domid == 1 for domid, _ in sim.hv.bindings)


async def test_closing_the_device_model_connection_destroys_its_servers(sim):
    await sim.create_domain(1)
    dm = await DoubleDM.start(sim, 1, 1, (MMIO_BASE, MMIO_BASE + 0xFFF))
    await dm.dm.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert sim.hv.domain(1).servers == {} and sim.hv.bindings == {}


def test_wire_access_structs_agree_with_their_construct_declarations():
    from pmemd.sim import wire
    body = wire.GuestAccess.build(dict(space=1, dir=1, size=8, flags=3, count=2, addr=0x1234, data=0x5678))
    assert wire.ACCESS_STRUCT.unpack(body) == (1, 1, 8, 3, 2, 0x1234, 0x5678)
    reply = wire.AccessReply.build(dict(status=-3, trapped=1, data=0xABCD))
    assert wire.ACCESS_REPLY_STRUCT.unpack(reply) == (-3, 1, 0xABCD)
