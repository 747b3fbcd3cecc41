"""libxenevtchn, simulated: one socketpair per handle, 4-byte port numbers both ways.

The device model's end of the socketpair is its `xenevtchn_fd()`: it reads pending
local ports from it and writes local ports to notify. The simulator keeps the other end,
writes a binding's local port when the Xen side notifies, and reads the device model's
notifications in one task per handle. No frames, no JSON: this is the hot path.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

import structlog
import trio

log = structlog.get_logger("pmemd.sim.evtchn")

PORT = struct.Struct("<I")


@dataclass(eq=False)
class Binding:
    """A local (device-model side) port bound to a Xen-side port of a domain."""

    local_port: int
    handle: "EvtchnHandle"
    domid: int
    xen_port: int


@dataclass(eq=False)
class EvtchnHandle:
    """The simulator's side of one `xenevtchn_open()`."""

    id: int
    sock: socket.socket
    bindings: dict[int, Binding] = field(default_factory=dict)
    closed: bool = False

    def deliver(self, local_port: int) -> None:
        """Mark `local_port` pending for the device model (never blocks)."""
        if self.closed:
            return
        try:
            self.sock.send(PORT.pack(local_port))
        except (BlockingIOError, BrokenPipeError, ConnectionResetError) as exc:
            log.warning("evtchn delivery dropped", handle=self.id, port=local_port, error=repr(exc))

    async def serve(self, on_notify: Callable[[Binding], None]) -> None:
        """Read the device model's notifications until it closes its end."""
        fd = self.sock.fileno()
        rest = b""
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                return
            data = rest + data
            n = len(data) - len(data) % 4
            rest = data[n:]
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
