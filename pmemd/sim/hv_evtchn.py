"""libxenevtchn, simulated: one socketpair per handle, 4-byte port numbers both ways.

The device model's end of the socketpair is its `xenevtchn_fd()`: it reads pending
local ports from it and writes local ports to notify. The simulator keeps the other end,
writes a binding's local port when the Xen side notifies, and reads the device model's
notifications in one task per handle. No frames, no JSON: this is the hot path.

Right after a delivery the device model's answer usually comes within one channel round
trip, so `deliver` reads for it for up to REPLY_SPIN_SECONDS before returning (the
waiting vCPU then finds its wake-up already set); only a slower answer goes the long way
(the handle's task parked in epoll, woken, scheduled, then the vCPU task scheduled).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

log = structlog.get_logger("pmemd.sim.evtchn")

PORT = struct.Struct("<I")

# How long `deliver` polls for the device model's answer before leaving it to the handle's
# task. Bounded busy-wait: a slow device model costs the simulator at most this much CPU per
# delivery, and other simulator tasks wait at most this long. 0 disables it.
# (bench/ioreq.py: the sim <-> daemon round trip drops from ~1.5-2.5x to ~1x the raw channel.)
REPLY_SPIN_SECONDS = 50e-6
# After a poll that found nothing, this many deliveries skip polling: on a loaded host the
# device model is often not running at all, and polling then only steals its CPU.
SPIN_BACKOFF = 64


@dataclass(eq=False)
class Binding:
    """A local (device-model side) port bound to a Xen-side port of a domain."""

    local_port: int
    handle: EvtchnHandle
    domid: int
    xen_port: int


@dataclass(eq=False)
class EvtchnHandle:
    """The simulator's side of one `xenevtchn_open()`."""

    id: int
    sock: socket.socket
    bindings: dict[int, Binding] = field(default_factory=dict)
    closed: bool = False
    _on_notify: Callable[[Binding], None] | None = None  # set while `serve` runs
    _rest: bytes = b""  # a partial port number read by `serve` or `deliver`
    _skip_polls: int = 0  # deliveries left before polling again (SPIN_BACKOFF)

    def deliver(self, local_port: int) -> None:
        """Mark `local_port` pending for the device model; then poll briefly for its answer.

        Never blocks: the send is non-blocking and the poll is bounded (REPLY_SPIN_SECONDS).
        """
        if self.closed:
            return
        try:
            self.sock.send(PORT.pack(local_port))
        except (BlockingIOError, BrokenPipeError, ConnectionResetError) as exc:
            log.warning("evtchn delivery dropped", handle=self.id, port=local_port, error=repr(exc))
            return
        if self._skip_polls:
            self._skip_polls -= 1
        elif REPLY_SPIN_SECONDS > 0 and self._on_notify is not None:
            self._poll_for_answer(self._on_notify)

    def _poll_for_answer(self, on_notify: Callable[[Binding], None]) -> None:
        """Non-blocking reads until something arrives or the spin ends; EOF is left to `serve`."""
        fd = self.sock.fileno()
        deadline = time.perf_counter() + REPLY_SPIN_SECONDS
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    self._skip_polls = SPIN_BACKOFF
                    return
                continue
            except OSError:
                return
            if data:
                self._dispatch(data, on_notify)
            return

    async def serve(self, on_notify: Callable[[Binding], None]) -> None:
        """Read the device model's notifications until it closes its end."""
        fd = self.sock.fileno()
        self._on_notify = on_notify
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue  # `deliver` read it first
                except OSError:
                    data = b""
                if not data:
                    return
                self._dispatch(data, on_notify)
        finally:
            self._on_notify = None

    def _dispatch(self, data: bytes, on_notify: Callable[[Binding], None]) -> None:
        data = self._rest + data
        n = len(data) - len(data) % 4
        self._rest = data[n:]
        for (port,) in PORT.iter_unpack(data[:n]):
            binding = self.bindings.get(port)
            if binding is None:
                # Linux's evtchn driver answers EINVAL; no domain to blame.
                log.warning("notify on a port this handle has not bound", handle=self.id, port=port)
                continue
            on_notify(binding)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bindings.clear()
            self.sock.close()
