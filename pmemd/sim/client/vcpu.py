"""A synchronous vCPU of a simulated guest, for the scripted guest driver (its own process).

Each `GuestConnection` is one vCPU: accesses go one at a time, as a real vCPU issues
them. RAM is mapped directly (the guest's own memory); MMIO and port accesses go to
the simulator, which routes them to RAM, an ioreq server, or the null handler.
`trapped` counts accesses an ioreq server handled, so a driver can print
"ioreqs per call".
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass

from pmemd.ioreq.abi import IOREQ_READ, IOREQ_WRITE
from pmemd.sim import wire
from pmemd.sim.client.replies import protocol_error
from pmemd.sim.client.sync import SyncClient
from pmemd.sim.errors import WireError
from pmemd.xen.errors import DomainCrashed, HypervisorError, ProtocolError

FOUR_GIB = 1 << 32


@dataclass(frozen=True)
class AccessResult:
    data: int
    trapped: bool


class GuestConnection:
    """vCPU `vcpu` of domain `domid` on the simulator at `socket`.

    Errors: `DomainCrashed` if the domain crashed, shut down or was destroyed (also
    for an access in flight); `HypervisorError` (EINVAL) for impossible accesses.
    Accesses on a paused domain block until it is unpaused.
    """

    def __init__(self, socket: str | os.PathLike[str], domid: int, vcpu: int = 0) -> None:
        self._client = SyncClient(socket)
        try:
            reply = self._client.request("guest_attach", domid=domid, vcpu=vcpu)
        except BaseException:
            self._client.close()
            raise
        self.domid, self.vcpu = domid, vcpu
        self.lowmem, self.highmem = int(reply["lowmem"]), int(reply["highmem"])
        fd = reply["fds"][0]
        try:
            self._ram = mmap.mmap(fd, self.lowmem + self.highmem)
        finally:
            os.close(fd)
        self.accesses = 0
        self.trapped = 0

    # -- I/O -------------------------------------------------------------------------
    def access(
        self, space: int, addr: int, size: int, dir: int, data: int = 0, *,
        count: int = 1, df: bool = False, data_is_ptr: bool = False,
    ) -> AccessResult:
        """One (possibly rep) access; `space` is wire.SPACE_MMIO or wire.SPACE_PORT."""
        flags = (wire.ACCESS_FLAG_DF if df else 0) | (wire.ACCESS_FLAG_DATA_IS_PTR if data_is_ptr else 0)
        body = wire.ACCESS_STRUCT.pack(space, dir, size, flags, count, addr, data)
        channel = self._client.channel
        channel.send(wire.encode_binary(wire.KIND_ACCESS, body))
        try:
            kind, reply = channel.receive()
        except WireError as exc:
            raise protocol_error(exc) from exc
        if kind != wire.KIND_ACCESS_REPLY or len(reply) != wire.ACCESS_REPLY_STRUCT.size:
            raise ProtocolError(f"unexpected reply kind {kind} to an access")
        status, trapped, value = wire.ACCESS_REPLY_STRUCT.unpack(reply)
        if status:
            if -status == errno.ESRCH:
                raise DomainCrashed(f"domain {self.domid} is not running")
            raise HypervisorError(-status, f"access {space=} {addr=:#x} {size=} refused")
        self.accesses += 1
        self.trapped += trapped
        return AccessResult(value, bool(trapped))

    def mmio_read(self, addr: int, size: int) -> int:
        return self.access(wire.SPACE_MMIO, addr, size, IOREQ_READ).data

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.access(wire.SPACE_MMIO, addr, size, IOREQ_WRITE, value)

    def port_read(self, port: int, size: int) -> int:
        return self.access(wire.SPACE_PORT, port, size, IOREQ_READ).data

    def port_write(self, port: int, size: int, value: int) -> None:
        self.access(wire.SPACE_PORT, port, size, IOREQ_WRITE, value)

    # -- RAM ---------------------------------------------------------------------------
    def _offset(self, gpa: int, n: int) -> int:
        if 0 <= gpa and gpa + n <= self.lowmem:
            return gpa
        if FOUR_GIB <= gpa and gpa + n <= FOUR_GIB + self.highmem:
            return self.lowmem + gpa - FOUR_GIB
        raise ValueError(f"[{gpa:#x}, {gpa + n:#x}) is not guest RAM")

    def read_memory(self, gpa: int, n: int) -> bytes:
        off = self._offset(gpa, n)
        return self._ram[off : off + n]

    def write_memory(self, gpa: int, data: bytes) -> None:
        off = self._offset(gpa, len(data))
        self._ram[off : off + len(data)] = data

    def close(self) -> None:
        self._ram.close()
        self._client.close()

    def __enter__(self) -> GuestConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
