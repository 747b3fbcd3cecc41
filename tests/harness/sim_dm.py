"""A device model on the simulator's raw client API, for tests of Xen's rules and of what
pmemd does around a server it does not serve (`DoubleDM`), and the accesses they make."""

from __future__ import annotations

import struct

from pmemd.ioreq import abi
from pmemd.sim.ioreq import Request

MMIO_BASE = 0xF000_0000


def mmio(addr: int, size: int = 4, *, read: bool = True, data: int = 0, count: int = 1, df: bool = False,
         ptr: bool = False) -> Request:
    return Request(abi.IOREQ_TYPE_COPY, addr, data, count, size, abi.IOREQ_READ if read else abi.IOREQ_WRITE,
                     df, ptr)


class DoubleDM:
    """A test-double device model on the raw client API: it writes whatever states it is told to."""

    def __init__(self, dm, server_id, page, evtchn, ports) -> None:  # type: ignore[no-untyped-def]
        self.dm, self.server_id, self.page, self.evtchn, self.ports = dm, server_id, page, evtchn, ports

    @classmethod
    async def start(cls, sim, domid: int, vcpus: int, mmio_range: tuple[int, int]) -> DoubleDM:  # type: ignore[no-untyped-def]
        dm = await sim.dm(domid)
        sid = await dm.create_ioreq_server()
        page = await dm.map_ioreq_page(sid)
        evtchn = await dm.open_event_channel()
        ports = []
        for v in range(vcpus):
            (remote,) = struct.unpack_from("<I", page, v * 32 + abi.VP_EPORT_OFFSET)
            ports.append(await evtchn.bind_interdomain(remote))
        await dm.map_io_range(sid, True, *mmio_range)
        await dm.set_ioreq_server_state(sid, True)
        return cls(dm, sid, page, evtchn, ports)

    def state(self, vcpu: int) -> int:
        return self.page[vcpu * 32 + abi.BITS_OFFSET] & abi.STATE_MASK

    def set_state(self, vcpu: int, state: int) -> None:
        off = vcpu * 32 + abi.BITS_OFFSET
        self.page[off] = abi.with_state(self.page[off], state)

    def slot(self, vcpu: int) -> abi.Ioreq:
        return abi.Ioreq.parse(self.page[vcpu * 32:(vcpu + 1) * 32])
