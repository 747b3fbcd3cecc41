"""`DeviceModelHypervisor` over the simulator socket (see `pmemd.sim.hypervisor`)."""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import Sequence
from typing import Any

import trio

from pmemd.ioreq import abi
from pmemd.sim import platform_page, wire
from pmemd.sim.client import replies
from pmemd.sim.client.evtchn import SimEventChannel
from pmemd.sim.client.replies import decode_reply, protocol_error, raise_for_reply
from pmemd.sim.errors import WireError
from pmemd.xen.api import DeviceModelHypervisor, DomainInfo, EventChannel, IoreqServerInfo, PlatformEvents
from pmemd.xen.errors import ProtocolError


class SimDeviceModel(DeviceModelHypervisor):
    """One device model's connection to the simulator for domain `domid`.

    Resources: mappings stay valid until `aclose()` (or longer, while views exist);
    closing the connection makes the simulator destroy the servers it created.
    """

    def __init__(self, channel: wire.AsyncChannel, domid: int) -> None:
        self.channel = channel
        self.domid = domid
        self._lock = trio.Lock()
        self._maps: list[mmap.mmap] = []
        self._evtchns: list[SimEventChannel] = []

    @classmethod
    async def connect(cls, path: str | os.PathLike[str], domid: int) -> SimDeviceModel:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        return cls(wire.AsyncChannel(sock), domid)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """One request/reply round trip; returns the reply with its fds under "fds"."""
        async with self._lock:
            await self.channel.send(wire.encode_json({"op": op, **args}))
            try:
                frame = await self.channel.receive()
                if frame is None:
                    raise ProtocolError("simulator closed the connection")
                reply = decode_reply(*frame, self.channel.decoder)
            except WireError as exc:
                raise protocol_error(exc) from exc
        return raise_for_reply(reply)

    async def _dm(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.request(op, domid=self.domid, **args)

    def _map(self, fd: int, length: int, offset: int = 0) -> memoryview:
        try:
            m = mmap.mmap(fd, length, offset=offset)
        finally:
            os.close(fd)
        self._maps.append(m)
        return memoryview(m)

    async def create_ioreq_server(self, handle_bufioreq: int = abi.HVM_IOREQSRV_BUFIOREQ_OFF) -> int:
        return int((await self._dm("ioreq_server_create", handle_bufioreq=handle_bufioreq))["id"])

    async def get_ioreq_server_info(self, server_id: int) -> IoreqServerInfo:
        r = await self._dm("ioreq_server_info", id=server_id)
        return IoreqServerInfo(r["ioreq_gfn"], r["bufioreq_gfn"], r["bufioreq_port"])

    async def map_ioreq_page(self, server_id: int) -> memoryview:
        r = await self._dm("ioreq_server_map_resource", id=server_id, frame=abi.IOREQ_RESOURCE_FRAME_SYNC)
        return self._map(r["fds"][0], abi.PAGE_SIZE)

    async def map_io_range(self, server_id: int, is_mmio: bool, start: int, end_inclusive: int) -> None:
        await self._dm("ioreq_server_map_range", id=server_id, is_mmio=is_mmio, start=start, end=end_inclusive)

    async def unmap_io_range(self, server_id: int, is_mmio: bool, start: int, end_inclusive: int) -> None:
        await self._dm("ioreq_server_unmap_range", id=server_id, is_mmio=is_mmio, start=start, end=end_inclusive)

    async def set_ioreq_server_state(self, server_id: int, enabled: bool) -> None:
        await self._dm("ioreq_server_set_state", id=server_id, enabled=enabled)

    async def destroy_ioreq_server(self, server_id: int) -> None:
        await self._dm("ioreq_server_destroy", id=server_id)

    async def open_event_channel(self) -> EventChannel:
        r = await self.request("evtchn_open")
        chan = SimEventChannel(r["fds"][0], int(r["handle"]), self._evtchn_request)
        self._evtchns.append(chan)
        return chan

    async def _evtchn_request(self, op: str, **args: Any) -> dict[str, Any]:
        if op == "evtchn_bind_interdomain":
            args["domid"] = self.domid
        return await self.request(op, **args)

    async def map_foreign(self, gfn: int, nr_pages: int) -> memoryview:
        r = await self._dm("foreign_map", gfn=gfn, nr=nr_pages)
        return self._map(r["fds"][0], nr_pages * abi.PAGE_SIZE, r["offset"])

    async def populate_pmem_map(self, mfn: int, gfn: int, nr_mfns: int) -> None:
        await self._dm("populate_pmem_map", mfn=mfn, gfn=gfn, nr_mfns=nr_mfns)

    async def open_platform(self) -> PlatformEvents:
        r = await self._dm("platform_map")
        return SimPlatformEvents(self._map(r["fds"][0], platform_page.PAGE_BYTES))

    async def shutdown(self, reason: int) -> None:
        await self._dm("domain_shutdown", reason=reason)

    async def domain_info(self) -> DomainInfo:
        return replies.domain_info(await self._dm("domain_info"))

    async def aclose(self) -> None:
        for chan in self._evtchns:
            chan.close()
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # a view is still alive; the mapping goes with it
        self._maps.clear()
        self.channel.close()
        await trio.lowlevel.checkpoint()


class SimPlatformEvents(PlatformEvents):
    """The simulator's platform page (`pmemd.sim.platform_page`), written in place."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._writer: platform_page.PlatformWriter | None = platform_page.PlatformWriter(view)

    def _open(self) -> platform_page.PlatformWriter:
        if self._writer is None:
            raise ValueError("the platform page is closed")
        return self._writer

    def raise_gpe(self, gpe: int) -> None:
        self._open().raise_gpe(gpe)

    def set_poison(self, ranges: Sequence[tuple[int, int]]) -> None:
        self._open().set_poison(ranges)

    def close(self) -> None:
        if self._writer is not None:
            self._writer = None
            self._view.release()


async def connect(spec: str, domid: int) -> DeviceModelHypervisor:
    """The `sim` backend of `pmemd.xen.backends`: `spec` is the simulator's socket path."""
    return await SimDeviceModel.connect(spec, domid)
