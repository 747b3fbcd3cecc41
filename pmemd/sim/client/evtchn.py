"""libxenevtchn over the simulator's socketpair: 4-byte local port numbers both ways."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Awaitable, Callable

import trio

from pmemd.xen.api import EventChannel

PORT = struct.Struct("<I")

# After handling a request, poll the fd for this long before parking in epoll: the reply
# to a notification usually lands within one channel round trip, and parking costs trio
# an epoll_ctl + epoll_wait + reschedule (bench/ioreq_channel.py: ~1.9x -> see report).
# Bounded, so other tasks are delayed by at most this much; 0 disables it.
SPIN_SECONDS = 60e-6


class SimEventChannel(EventChannel):
    """The device model's end of a simulated `xenevtchn_handle`.

    Hot path: `pending()` parks on the fd first and reads after (a ping-pong peer is
    never ahead of us, so trying the read first would just cost a failing syscall),
    and decodes every port in one read; `notify()` is a single non-blocking write.
    """

    def __init__(self, fd: int, handle: int, request: Callable[..., Awaitable[dict[str, object]]]) -> None:
        self.fd = fd
        self.handle = handle
        self._request = request
        self._rest = b""
        self._spinning = False
        os.set_blocking(fd, False)

    async def bind_interdomain(self, remote_port: int) -> int:
        reply = await self._request("evtchn_bind_interdomain", handle=self.handle, remote_port=remote_port)
        return int(reply["local_port"])  # type: ignore[call-overload]

    async def unbind(self, local_port: int) -> None:
        await self._request("evtchn_unbind", handle=self.handle, port=local_port)

    async def pending(self) -> list[int]:
        data = self._spin() if self._spinning else b""
        while True:
            if not data:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    data = os.read(self.fd, 4096)
                except BlockingIOError:
                    continue
            else:
                await trio.lowlevel.checkpoint()
            if not data:
                raise trio.ClosedResourceError("event channel closed by the hypervisor")
            self._spinning = True
            if len(data) == 4 and not self._rest:
                return [PORT.unpack(data)[0]]
            data = self._rest + data
            n = len(data) & ~3
            self._rest = data[n:]
            if n:
                return [p for (p,) in PORT.iter_unpack(data[:n])]
            data = b""

    def _spin(self) -> bytes:
        """Non-blocking reads for up to SPIN_SECONDS; b"" if nothing came."""
        self._spinning = False
        deadline = time.perf_counter() + SPIN_SECONDS
        fd = self.fd
        while True:
            try:
                return os.read(fd, 4096)  # b"" at EOF: the caller then sees it after wait_readable
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    return b""

    def notify(self, local_port: int) -> None:
        os.write(self.fd, PORT.pack(local_port))

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
