"""The daemon's generic ioreq server: set-up order, Xen's request semantics, robustness, teardown."""

from __future__ import annotations

import struct
from dataclasses import astuple

import trio

from pmemd.ioreq import abi
from pmemd.ioreq.device import IoRange
from pmemd.ioreq.machine import (
    IoRequest,
    Verdict,
    device_model_wakes,
    item_address,
    needs_completion,
)
from pmemd.ioreq.server import IoreqServer
from pmemd.sim.ioreq import Request

MMIO_BASE = 0xF000_0000
PORT = 0x0A18
RANGES = [IoRange(True, MMIO_BASE, MMIO_BASE + 0xFFF), IoRange(False, PORT, PORT + 7)]


class Recorder:
    """Reads return a function of the address; every access is recorded."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int, int | None]] = []
        self.fail = False

    def mmio_read(self, addr: int, size: int) -> int:
        self.log.append(("mmio-read", addr, size, None))
        if self.fail:
            raise RuntimeError("device broke")
        return 0x1100_0000_0000_0000 | addr

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.log.append(("mmio-write", addr, size, value))

    def port_read(self, port: int, size: int) -> int:
        self.log.append(("port-read", port, size, None))
        return 0xA5A5_A5A5

    def port_write(self, port: int, size: int, value: int) -> None:
        self.log.append(("port-write", port, size, value))


def req(type_: int, addr: int, size: int = 4, *, read: bool = True, data: int = 0, count: int = 1,
        df: bool = False, ptr: bool = False) -> Request:
    """An access as a trapped vCPU hands it to the simulated Xen."""
    return Request(type_, addr, data, count, size, abi.IOREQ_READ if read else abi.IOREQ_WRITE, df, ptr)


def dm_req(type_: int, addr: int, size: int = 4, **kw: bool) -> IoRequest:
    """The same request as the daemon's server copies it out of the slot."""
    return IoRequest(*astuple(req(type_, addr, size, **kw)))  # type: ignore[arg-type]


async def start(sim, nursery, vcpus: int = 1) -> tuple[IoreqServer, Recorder]:  # type: ignore[no-untyped-def]
    await sim.create_domain(1, vcpus=vcpus)
    device = Recorder()
    server = IoreqServer(await sim.dm(1), device, RANGES)
    await nursery.start(server.run)
    return server, device


# -- pure machine ------------------------------------------------------------------------------

def test_device_model_serves_only_ready_slots():
    assert [device_model_wakes(s) for s in range(5)] == [
        Verdict.SPURIOUS, Verdict.SERVE, Verdict.SPURIOUS, Verdict.SPURIOUS, Verdict.SPURIOUS]


def test_data_goes_back_only_for_non_pointer_requests_other_than_pio_writes():
    assert needs_completion(dm_req(abi.IOREQ_TYPE_COPY, 0, read=False))
    assert needs_completion(dm_req(abi.IOREQ_TYPE_PIO, 0, read=True))
    assert not needs_completion(dm_req(abi.IOREQ_TYPE_PIO, 0, read=False))
    assert not needs_completion(dm_req(abi.IOREQ_TYPE_COPY, 0, ptr=True))


def test_item_addresses_wrap_at_64_bits():
    assert item_address(4, 2, 4, True) == (1 << 64) - 4


# -- set-up and teardown ---------------------------------------------------------------------------

async def test_started_is_reported_only_once_the_server_is_enabled_with_its_ranges(sim, nursery):
    server, _ = await start(sim, nursery, vcpus=2)
    hv_server = sim.hv.domain(1).servers[server.server_id]
    assert hv_server.enabled
    assert hv_server.ranges[1].ranges == [(MMIO_BASE, MMIO_BASE + 0xFFF)]
    assert sorted(xen_port for _, xen_port in sim.hv.bindings) == sorted(hv_server.vcpu_ports)


async def test_cancellation_tears_down_in_reverse_and_destroys_the_server(sim):
    await sim.create_domain(1)
    server = IoreqServer(await sim.dm(1), Recorder(), RANGES)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.cancel_scope.cancel()
    assert sim.hv.domain(1).servers == {} and sim.hv.bindings == {}


# -- semantics ---------------------------------------------------------------------------------------

async def test_mmio_read_returns_the_device_value_masked_to_size(sim, nursery):
    _, device = await start(sim, nursery)
    assert await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE + 8, 2)) == (
        (MMIO_BASE + 8) & 0xFFFF, True)
    assert device.log == [("mmio-read", MMIO_BASE + 8, 2, None)]


async def test_writes_reach_the_device_masked_to_size(sim, nursery):
    _, device = await start(sim, nursery)
    await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_PIO, PORT, 2, read=False, data=0x12345678))
    assert device.log == [("port-write", PORT, 2, 0x5678)]


async def test_rep_mmio_read_with_df_walks_down_and_returns_the_last_item(sim, nursery):
    _, device = await start(sim, nursery)
    data, _ = await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE + 0x100, 4, count=3, df=True))
    assert [a for _, a, _, _ in device.log] == [MMIO_BASE + 0x100, MMIO_BASE + 0xFC, MMIO_BASE + 0xF8]
    assert data == (MMIO_BASE + 0xF8) & 0xFFFFFFFF


async def test_rep_pio_data_is_ptr_write_reads_the_guest_buffer_and_the_port_stays(sim, nursery):
    _, device = await start(sim, nursery)
    dom = sim.hv.domain(1)
    dom.ram.write(0x3000, struct.pack("<III", 1, 2, 3))
    await dom.access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, read=False, data=0x3000, count=3, ptr=True))
    assert device.log == [("port-write", PORT, 4, v) for v in (1, 2, 3)]


async def test_mmio_data_is_ptr_read_fills_the_guest_buffer_with_df(sim, nursery):
    _, device = await start(sim, nursery)
    dom = sim.hv.domain(1)
    result = await dom.access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE + 0x10, 8, data=0x5008, count=2, df=True,
                                     ptr=True))
    assert result == (0x5008, True)  # data_is_ptr: data is not written back
    assert struct.unpack("<QQ", dom.ram.read(0x5000, 16)) == (
        0x1100_0000_0000_0000 | (MMIO_BASE + 0x8), 0x1100_0000_0000_0000 | (MMIO_BASE + 0x10))


async def test_pio_write_does_not_return_data(sim, nursery):
    await start(sim, nursery)
    assert await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, read=False, data=7)) == (7, True)


# -- robustness ----------------------------------------------------------------------------------------

async def test_malformed_size_completes_as_unhandled_and_serving_continues(sim, nursery):
    server, device = await start(sim, nursery)
    dom = sim.hv.domain(1)
    assert await dom.access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE, 3)) == ((1 << 64) - 1, True)
    assert await dom.access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE, 4)) == (MMIO_BASE, True)
    assert server.statistics().malformed == 1 and len(device.log) == 1


async def test_pio_of_eight_bytes_is_malformed(sim, nursery):
    server, device = await start(sim, nursery)
    assert await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_PIO, PORT, 8)) == ((1 << 64) - 1, True)
    assert server.statistics().malformed == 1 and device.log == []


async def test_zero_or_absurd_counts_are_malformed(sim, nursery):
    server, device = await start(sim, nursery)
    dom = sim.hv.domain(1)
    await dom.access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, count=0))
    await dom.access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, count=1 << 31))
    assert server.statistics().malformed == 2 and device.log == []


async def test_a_failing_device_completes_the_access_as_unhandled(sim, nursery):
    server, device = await start(sim, nursery)
    device.fail = True
    assert await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE, 4)) == (0xFFFFFFFF, True)
    assert server.statistics().device_errors == 1


async def test_statistics_count_served_requests_by_kind(sim, nursery):
    server, _ = await start(sim, nursery)
    dom = sim.hv.domain(1)
    await dom.access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE, 4))
    await dom.access(0, req(abi.IOREQ_TYPE_COPY, MMIO_BASE, 4, read=False, count=2))
    await dom.access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, read=False))
    stats = server.statistics()
    assert stats.served == 3 and dict(stats.by_kind) == {"mmio-read": 1, "mmio-write-rep": 1, "pio-write": 1}


async def test_every_vcpu_is_served_through_its_own_slot(sim, nursery):
    await start(sim, nursery, vcpus=4)
    dom = sim.hv.domain(1)
    results = {}

    async def vcpu(v: int) -> None:
        results[v] = (await dom.access(v, req(abi.IOREQ_TYPE_COPY, MMIO_BASE + 8 * v, 8)))[0]
    async with trio.open_nursery() as guests:
        for v in range(4):
            guests.start_soon(vcpu, v)
    assert results == {v: 0x1100_0000_0000_0000 | (MMIO_BASE + 8 * v) for v in range(4)}


async def test_a_rep_access_larger_than_one_page_is_malformed(sim, nursery):
    """Xen clips a rep access to one page (count × size ≤ 4096): 4096 notify writes in one ioreq are not real."""
    server, device = await start(sim, nursery)
    dom = sim.hv.domain(1)
    await dom.access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, read=False, data=0x3000, count=4096, ptr=True))
    await dom.access(0, req(abi.IOREQ_TYPE_PIO, PORT, 2, read=False, data=0x3000, count=2049, ptr=True))
    assert server.statistics().malformed == 2 and device.log == []


async def test_a_rep_access_of_exactly_one_page_is_served(sim, nursery):
    server, device = await start(sim, nursery)
    await sim.hv.domain(1).access(0, req(abi.IOREQ_TYPE_PIO, PORT, 4, read=False, data=0x3000, count=1024, ptr=True))
    assert server.statistics().malformed == 0 and len(device.log) == 1024
