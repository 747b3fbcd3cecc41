"""Waiting on the evtchn device (`pmemd.xen.real.event_fd`), with a socketpair standing in for
/dev/xen/evtchn: what the daemon writes back (the unmask) arrives at the other end."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pmemd.xen.real.event_fd import PORT, EventFd


@pytest.fixture
def pair() -> Iterator[tuple[EventFd, socket.socket]]:
    ours, device = socket.socketpair()
    with ours, device:
        device.setblocking(False)
        yield EventFd(ours.fileno()), device


def fire(device: socket.socket, *ports: int) -> None:
    device.sendall(b"".join(PORT.pack(p) for p in ports))


def unmasked(device: socket.socket) -> list[int]:
    try:
        data = device.recv(4096)
    except BlockingIOError:
        return []
    return [p for (p,) in PORT.iter_unpack(data)]


async def test_fired_ports_stay_masked_until_unmasked_with_one_write(pair) -> None:
    events, device = pair
    fire(device, 5, 6, 7)
    ports = await events.pending()
    assert ports == [5, 6, 7] and unmasked(device) == []
    events.unmask(ports)
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
    assert events.next_in_burst() == [3]
    assert events.waits == {"parked": 1, "caught": 1, "missed": 0}


async def test_a_burst_that_ends_misses_one_window_and_returns_nothing(pair) -> None:
    events, device = pair
    fire(device, 3)
    await events.pending()
    assert events.next_in_burst() == []
    assert events.waits == {"parked": 1, "caught": 0, "missed": 1}
