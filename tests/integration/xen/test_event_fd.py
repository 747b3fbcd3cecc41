"""Waiting on the evtchn device (`pmemd.xen.real.event_fd`), with a socketpair standing in for
/dev/xen/evtchn: what the daemon writes back (the unmask) arrives at the other end."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from pmemd.xen.real.event_fd import BURST_BUDGET, PORT, EventFd


@pytest.fixture
def pair() -> Iterator[tuple[EventFd, socket.socket]]:
    ours, device = socket.socketpair()
    with ours, device:
        yield EventFd(ours.fileno()), device


def fire(device: socket.socket, *ports: int) -> None:
    device.sendall(b"".join(PORT.pack(p) for p in ports))


def unmasked(device: socket.socket) -> list[int]:
    data = device.recv(4096)
    return [p for (p,) in PORT.iter_unpack(data)]


async def test_every_fired_port_is_returned_and_unmasked_with_one_write(pair) -> None:
    events, device = pair
    fire(device, 5, 6, 7)
    assert await events.pending() == [5, 6, 7]
    assert unmasked(device) == [5, 6, 7]


async def test_the_first_event_is_awaited_parked_in_trio(pair) -> None:
    events, device = pair
    fire(device, 3)
    await events.pending()
    assert events.waits == {"parked": 1, "caught": 0, "missed": 0}


async def test_an_event_within_the_burst_window_is_caught_without_parking(pair) -> None:
    events, device = pair
    fire(device, 3)
    await events.pending()
    fire(device, 3)
    assert await events.pending() == [3]
    assert events.waits == {"parked": 1, "caught": 1, "missed": 0}


async def test_a_burst_that_ends_misses_one_window_then_parks_until_the_next_event(pair) -> None:
    events, device = pair
    fire(device, 3)
    await events.pending()
    got: list[list[int]] = []

    async def wait() -> None:
        got.append(await events.pending())

    with trio.fail_after(5):
        async with trio.open_nursery() as waiter:
            waiter.start_soon(wait)
            await trio.sleep(0.05)  # well past the window: the waiter is parked
            assert events.waits["missed"] == 1
            fire(device, 9)
    assert got == [[9]]
    assert events.waits == {"parked": 2, "caught": 0, "missed": 1}


async def test_other_tasks_run_at_least_once_every_budget_events_of_a_storm(pair) -> None:
    events, device = pair
    served = 0
    seen: list[int] = []  # events served when the other task got a turn

    async def other_task() -> None:
        while True:
            seen.append(served)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        for _ in range(4 * BURST_BUDGET):
            fire(device, 1)
            await events.pending()
            unmasked(device)
            served += 1
        nursery.cancel_scope.cancel()
    # trio runs a batch's tasks in random order: a turn may fall before or after a whole streak
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert seen[0] <= BURST_BUDGET and len(seen) >= 3 and max(gaps) <= 2 * BURST_BUDGET, seen
    assert events.waits["parked"] == 4 and events.waits["caught"] == 4 * (BURST_BUDGET - 1)
