"""The ioreq server's burst path on the real backend's event channel (`EventFd` over a socketpair
standing in for /dev/xen/evtchn): requests seen by watching the slot, the bound on a storm."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from pmemd.ioreq import abi
from pmemd.ioreq.server import BURST_BUDGET, IoreqServer, watch_slot
from pmemd.xen.api import EventChannel
from pmemd.xen.real.event_fd import PORT, EventFd

NOTIFY_PORT = 0x0A18
LOCAL_PORT = 5
READ = abi.SLOT_STRUCT.pack(NOTIFY_PORT, 0, 1, 4, 7, 0, abi.make_bits(abi.STATE_IOREQ_READY, dir=abi.IOREQ_READ),
                            abi.IOREQ_TYPE_PIO)


class Counter:
    """A device whose port reads count up."""

    def __init__(self) -> None:
        self.reads = 0

    def port_read(self, port: int, size: int) -> int:
        self.reads += 1
        return self.reads

    def port_write(self, port: int, size: int, value: int) -> None: ...
    def mmio_read(self, addr: int, size: int) -> int: return 0
    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


class Guest(EventChannel):
    """One vCPU looping on a port read, seen through `EventFd`: every completion (notify) puts
    its next request in the slot, with an event (`fire`) or, like Xen before the event, without.
    The port masks as the evtchn driver's does: delivered once, then held until unmasked."""

    def __init__(self, page: memoryview, fd: int, device: socket.socket, *, fire: bool, requests: int) -> None:
        self.page, self.device, self.fire, self.left = page, device, fire, requests
        self.events = EventFd(fd)
        self.notified = 0
        self.masked = self.held = False
        self.done = trio.Event()

    def trap(self) -> None:
        self.page[: abi.IOREQ_SIZE] = READ
        if self.fire:
            self.raise_event()

    def raise_event(self) -> None:
        if self.masked:
            self.held = True
            return
        self.masked = True
        self.device.sendall(PORT.pack(LOCAL_PORT))

    async def bind_interdomain(self, remote_port: int) -> int:
        return LOCAL_PORT

    async def unbind(self, local_port: int) -> None: ...

    async def pending(self) -> list[int]:
        return await self.events.pending()

    def next_in_burst(self) -> list[int]:
        return self.events.next_in_burst()

    def unmask(self, ports: list[int]) -> None:
        self.events.unmask(ports)
        if ports:
            self.masked = False
            if self.held:
                self.held = False
                self.raise_event()

    def notify(self, local_port: int) -> None:
        self.notified += 1
        self.left -= 1
        if self.left > 0:
            self.trap()
        else:
            self.done.set()

    def close(self) -> None: ...


class Domain:
    domid = 1


@pytest.fixture
def wire() -> Iterator[tuple[int, socket.socket]]:
    ours, device = socket.socketpair()
    with ours, device:
        device.setblocking(False)
        yield ours.fileno(), device


async def serve(guest: Guest, page: memoryview) -> IoreqServer:
    """Serve `guest` until its requests are done."""
    server = IoreqServer(Domain(), Counter(), [])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._serve, page, guest, {LOCAL_PORT: 0}, None, [])
        with trio.fail_after(10):
            await guest.done.wait()
        nursery.cancel_scope.cancel()
    return server


def test_a_slot_that_goes_ready_is_seen_and_an_idle_one_is_given_up() -> None:
    page = memoryview(bytearray(abi.PAGE_SIZE))
    assert not watch_slot(page, 0, 100)
    page[: abi.IOREQ_SIZE] = READ
    assert watch_slot(page, 0, 100)


async def test_the_next_request_of_a_looping_vcpu_is_served_by_watching_its_slot(wire) -> None:
    page = memoryview(bytearray(abi.PAGE_SIZE))
    guest = Guest(page, *wire, fire=False, requests=10)  # only the first request has an event
    guest.trap()
    guest.raise_event()
    server = await serve(guest, page)
    assert server.statistics().watched == 9 and server.statistics().served == 10


async def test_other_tasks_run_at_least_once_every_budget_batches_of_a_storm(wire) -> None:
    page = memoryview(bytearray(abi.PAGE_SIZE))
    guest = Guest(page, *wire, fire=True, requests=10 * BURST_BUDGET)
    turns: list[int] = []  # requests served when another task got a turn

    async def other_task() -> None:
        while True:
            turns.append(guest.notified)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        guest.trap()
        await serve(guest, page)
        nursery.cancel_scope.cancel()
    # trio runs a batch's tasks in random order: a turn may fall before or after a whole streak
    gaps = [b - a for a, b in zip(turns, turns[1:])]
    assert len(turns) >= 9 and max(gaps) <= 2 * BURST_BUDGET, gaps
