"""libxenevtchn over the simulator's socketpair: 4-byte local port numbers both ways."""

from __future__ import annotations

import os
import struct
from typing import Awaitable, Callable

import trio

from pmemd.xen.api import EventChannel

PORT = struct.Struct("<I")


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
        os.set_blocking(fd, False)

    async def bind_interdomain(self, remote_port: int) -> int:
        reply = await self._request("evtchn_bind_interdomain", handle=self.handle, remote_port=remote_port)
        return int(reply["local_port"])  # type: ignore[arg-type]

    async def unbind(self, local_port: int) -> None:
        await self._request("evtchn_unbind", handle=self.handle, port=local_port)

    async def pending(self) -> list[int]:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            if not data:
                raise trio.ClosedResourceError("event channel closed by the hypervisor")
            if len(data) == 4 and not self._rest:
                return [PORT.unpack(data)[0]]
            data = self._rest + data
            n = len(data) & ~3
            self._rest = data[n:]
            if n:
                return [p for (p,) in PORT.iter_unpack(data[:n])]

    def notify(self, local_port: int) -> None:
        os.write(self.fd, PORT.pack(local_port))

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
