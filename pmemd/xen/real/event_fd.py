"""Waiting on /dev/xen/evtchn: which ports fired, unmasked, with a burst path for trap storms.

The device's ABI (Linux drivers/xen/evtchn.c): a read returns the fired ports as native u32s
(they stay masked), writing ports back unmasks them — the calls libxenevtchn's `pending` and
`unmask` make one port at a time, here one read and one write for all of them.

The burst path. A device model parked in trio's loop pays a whole wake-up (epoll_ctl,
epoll_wait, clock reads, a scheduler pass) per trap; in the nested lab's PV dom0 that is
~0.9 ms, as much as QEMU-xen's whole trap round trip (every syscall and clock read there is a
trip through Xen). Traps come in bursts (an mmio-mode `_DSM` call is ~25 accesses, ndctl makes
calls back to back), so after an event the next one is awaited in a blocking poll of at most
`BURST_WINDOW_MS`, and up to `BURST_BUDGET` events in a row are handed out without a trio
checkpoint. Both bounds limit how long other trio tasks wait: one window when a burst ends,
`BURST_BUDGET` events between two checkpoints.
"""

from __future__ import annotations

import os
import select
import struct

import trio

PORT = struct.Struct("=I")
MAX_PORTS = 64  # per read; more stay queued in the device for the next one
BURST_WINDOW_MS = 2
BURST_BUDGET = 32


class EventFd:
    """The ports that fire on one evtchn fd, and how each wait went (`waits`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._streak = 0  # events handed out since the last checkpoint; 0: park first
        self.waits = {"parked": 0, "caught": 0, "missed": 0}

    async def pending(self) -> list[int]:
        """The ports that fired, already unmasked: within a burst from a short blocking poll,
        else after parking in trio until the fd is readable."""
        if 0 < self._streak < BURST_BUDGET:
            if self._poll.poll(BURST_WINDOW_MS):
                self._streak += 1
                self.waits["caught"] += 1
                return self.take()
            self.waits["missed"] += 1
        self._streak = 0
        await trio.lowlevel.wait_readable(self.fd)
        self._streak = 1
        self.waits["parked"] += 1
        return self.take()

    def take(self) -> list[int]:
        """Read the fired ports (the fd is readable, so the read returns at once) and unmask
        them with one write."""
        data = os.read(self.fd, MAX_PORTS * PORT.size)
        os.write(self.fd, data)
        return [port for (port,) in PORT.iter_unpack(data)]
