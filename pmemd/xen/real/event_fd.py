"""Waiting on /dev/xen/evtchn: which ports fired, and unmasking them, with a burst path.

The device's ABI (Linux drivers/xen/evtchn.c): a read returns the fired ports as native u32s;
each stays masked (its interrupt disabled) until written back — the calls libxenevtchn's
`pending` and `unmask` make one port at a time, here one read and one write for all of them.
A port written back while an event is pending on it fires again at once.

The burst path. A device model parked in trio's loop pays a whole wake-up (epoll_ctl,
epoll_wait, clock reads, a scheduler pass) per trap; in the nested lab's PV dom0 that is
~0.9 ms, as much as QEMU-xen's whole trap round trip (every syscall and clock read there is a
trip through Xen). Traps come in bursts (an mmio-mode `_DSM` call is ~25 accesses, ndctl makes
calls back to back), so once a batch is served the next one is awaited in a blocking poll of
at most `BURST_WINDOW_MS` (`next_in_burst`, synchronous: no coroutine or checkpoint). How many
events a burst may take before trio runs again is the caller's rule (`pmemd.ioreq.server`).
"""

from __future__ import annotations

import os
import select
import struct

import trio

PORT = struct.Struct("=I")
MAX_PORTS = 64  # per read; more stay queued in the device for the next one
BURST_WINDOW_MS = 2


class EventFd:
    """The ports that fire on one evtchn fd, and how each wait went (`waits`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.waits = {"parked": 0, "caught": 0, "missed": 0}

    async def pending(self) -> list[int]:
        """The ports that fired (masked), after parking in trio until the fd is readable."""
        await trio.lowlevel.wait_readable(self.fd)
        self.waits["parked"] += 1
        return self.take()

    def next_in_burst(self) -> list[int]:
        """The next ports (masked) from a blocking poll of at most `BURST_WINDOW_MS`; [] if none."""
        if self._poll.poll(BURST_WINDOW_MS):
            self.waits["caught"] += 1
            return self.take()
        self.waits["missed"] += 1
        return []

    def take(self) -> list[int]:
        """Read the fired ports; the fd is readable, so the read returns at once."""
        return [port for (port,) in PORT.iter_unpack(os.read(self.fd, MAX_PORTS * PORT.size))]

    def unmask(self, ports: list[int]) -> None:
        """Let `ports` fire again, with one write."""
        if ports:
            os.write(self.fd, struct.pack(f"={len(ports)}I", *ports))
