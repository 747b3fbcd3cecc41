"""A simulated HVM domain: guest RAM, vCPUs, ioreq servers, and the synchronous ioreq path.

Guest RAM is one sparse memfd: [0, lowmem) at file offset 0, [4 GiB, 4 GiB + highmem)
right after it. Device models foreign-map it by gfn range (the fd plus an offset).

`Domain.access` is what a trapped vCPU does in Xen: RAM goes straight to the memfd; an
access entirely inside a range claimed by an enabled ioreq server goes through that
server's slot (`_send_ioreq`, Xen's `ioreq_send` + `wait_for_io`); anything else is
unhandled (reads all-ones, writes dropped). A device model that breaks the slot state
machine or the slot's event channel crashes this domain only.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from pmemd.sim import ioreq
from pmemd.sim.errors import DomainDead, XenError
from pmemd.sim.hv_emulate import Handler, NullHandler, all_ones, perform
from pmemd.sim.hv_physmap import Physmap
from pmemd.sim.hv_ranges import RangeSet
from pmemd.sim.ioreq import Request
from pmemd.xen.page import PAGE_SHIFT

log = structlog.get_logger("pmemd.sim.domain")

FOUR_GIB = 1 << 32
MAX_NR_IOREQ_SERVERS = 8
RANGE_PORT = 0
RANGE_MMIO = 1

PAUSED, RUNNING, CRASHED, SHUTDOWN, DESTROYED = "paused", "running", "crashed", "shutdown", "destroyed"


@dataclass(frozen=True)
class Layout:
    """The guest memory map (a `GuestConfig` without the parsing)."""

    lowmem: int
    highmem: int
    mmio_hole: int
    vcpus: int

    def __post_init__(self) -> None:
        if self.lowmem <= 0 or self.lowmem % ioreq.PAGE_SIZE or self.highmem % ioreq.PAGE_SIZE or self.highmem < 0:
            raise XenError(errno.EINVAL, "RAM sizes must be positive multiples of 4 KiB")
        if self.lowmem > FOUR_GIB - self.mmio_hole or self.mmio_hole < 0:
            raise XenError(errno.EINVAL, "lowmem overlaps the MMIO hole")
        if not 1 <= self.vcpus <= ioreq.HVM_MAX_VCPUS:
            raise XenError(errno.EINVAL, f"vcpus must be 1..{ioreq.HVM_MAX_VCPUS}")

    def ram_offset(self, gpa: int, n: int) -> int | None:
        """File offset of guest RAM [gpa, gpa+n), or None unless it lies in one RAM range."""
        if 0 <= gpa and gpa + n <= self.lowmem:
            return gpa
        if FOUR_GIB <= gpa and gpa + n <= FOUR_GIB + self.highmem:
            return self.lowmem + gpa - FOUR_GIB
        return None

    def as_dict(self) -> dict[str, int]:
        return dict(lowmem=self.lowmem, highmem=self.highmem, mmio_hole=self.mmio_hole, vcpus=self.vcpus)


class GuestRam:
    """Guest RAM as both a `Handler` (MMIO on RAM) and `Memory`; non-RAM reads all-ones."""

    def __init__(self, domid: int, layout: Layout) -> None:
        self.layout = layout
        self.fd = os.memfd_create(f"xen-dom{domid}-ram", os.MFD_CLOEXEC)
        size = layout.lowmem + layout.highmem
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def read(self, gpa: int, n: int) -> bytes:
        off = self.layout.ram_offset(gpa, n)
        return b"\xff" * n if off is None else self.map[off : off + n]

    def write(self, gpa: int, data: bytes) -> None:
        off = self.layout.ram_offset(gpa, len(data))
        if off is not None:
            self.map[off : off + len(data)] = data

    def mmio_read(self, addr: int, size: int) -> int:
        return int.from_bytes(self.read(addr, size), "little")

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.write(addr, value.to_bytes(size, "little"))

    port_read = mmio_read  # never used: ports are not RAM
    port_write = mmio_write

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


UNCLAIMED = NullHandler()


@dataclass(eq=False)
class SimIoreqServer:
    """One ioreq server: its ranges, its synchronous page and one Xen port per vCPU."""

    id: int
    owner: int  # connection id that created it
    page_fd: int
    page: mmap.mmap
    vcpu_ports: list[int]
    enabled: bool = False
    destroyed: bool = False
    ranges: dict[int, RangeSet] = field(default_factory=lambda: {RANGE_PORT: RangeSet(), RANGE_MMIO: RangeSet()})

    def write_eports(self) -> None:
        for vcpu, port in enumerate(self.vcpu_ports):
            ioreq.reset_slot(self.page, vcpu, port)

    def close(self) -> None:
        self.destroyed = True
        self.page.close()
        os.close(self.page_fd)


@dataclass(eq=False)
class Vcpu:
    index: int
    busy: bool = False
    attached: bool = False
    wake: trio.Event = field(default_factory=trio.Event)


class Domain:
    """One guest. Created paused; every terminal state wakes and fails pending accesses."""

    def __init__(self, domid: int, layout: Layout, notify: Callable[[Domain, int], None]) -> None:
        self.domid = domid
        self.layout = layout
        self.state = PAUSED
        self.crash_reason: str | None = None
        self.shutdown_reason: int | None = None
        self.ram = GuestRam(domid, layout)
        self.vcpus = [Vcpu(i) for i in range(layout.vcpus)]
        self.servers: dict[int, SimIoreqServer] = {}
        self.ports: dict[int, tuple[SimIoreqServer, int]] = {}  # Xen port -> (server, vcpu)
        self._next_port = 1
        self._notify = notify  # delivers a Xen-side port to whoever bound it
        self._state_changed = trio.Event()
        self.log = log.bind(domid=domid)
        self.physmap = Physmap(layout.lowmem, layout.highmem, layout.mmio_hole)
        self.pmem_io: Handler | None = None  # set by the hypervisor: serves pmem-mapped GPAs

    # -- lifecycle -----------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.state in (PAUSED, RUNNING)

    def info(self) -> dict[str, object]:
        return dict(
            domid=self.domid,
            state=self.state,
            crash_reason=self.crash_reason,
            shutdown_reason=self.shutdown_reason,
            ioreq_servers=sorted(self.servers),
            **self.layout.as_dict(),
        )

    def _set_state(self, state: str) -> None:
        self.log.info("domain state", old=self.state, new=state)
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        if not self.alive:
            for vcpu in self.vcpus:
                vcpu.wake.set()

    def unpause(self) -> None:
        self._require_alive()
        if self.state == PAUSED:
            self._set_state(RUNNING)

    def pause(self) -> None:
        self._require_alive()
        if self.state == RUNNING:
            self._set_state(PAUSED)

    def crash(self, reason: str) -> None:
        """Xen's `domain_crash()`: the guest stops, the simulator carries on."""
        if self.alive:
            self.log.error("domain crashed", reason=reason)
            self.crash_reason = reason
            self._set_state(CRASHED)

    def shutdown(self, reason: int) -> None:
        self._require_alive()
        self.shutdown_reason = reason
        self._set_state(SHUTDOWN)

    def destroy(self) -> list[int]:
        """Release RAM, servers and ports; return the Xen ports that were bound (to unbind)."""
        if self.state == DESTROYED:
            return []
        self._set_state(DESTROYED)
        ports = list(self.ports)
        for server in list(self.servers.values()):
            self._drop_server(server)
        self.ram.close()
        self.physmap.release_pmem()
        return ports

    def _require_alive(self) -> None:
        if not self.alive:
            raise DomainDead(f"domain {self.domid} is {self.state}")

    # -- ioreq servers (DMOPs) -------------------------------------------------------
    def server(self, server_id: int) -> SimIoreqServer:
        self._require_alive()
        try:
            return self.servers[server_id]
        except KeyError:
            raise XenError(errno.ENOENT, f"no ioreq server {server_id} on domain {self.domid}") from None

    def create_server(self, owner: int, handle_bufioreq: int) -> SimIoreqServer:
        self._require_alive()
        if handle_bufioreq != ioreq.HVM_IOREQSRV_BUFIOREQ_OFF:
            raise XenError(errno.EOPNOTSUPP, "the simulator has no buffered ioreq ring (use BUFIOREQ_OFF)")
        free = [i for i in range(MAX_NR_IOREQ_SERVERS) if i not in self.servers]
        if not free:
            raise XenError(errno.ENOSPC, f"domain {self.domid} already has {MAX_NR_IOREQ_SERVERS} ioreq servers")
        fd = os.memfd_create(f"xen-dom{self.domid}-ioreq{free[0]}", os.MFD_CLOEXEC)
        os.ftruncate(fd, ioreq.PAGE_SIZE)
        ports = []
        for _ in self.vcpus:
            ports.append(self._next_port)
            self._next_port += 1
        server = SimIoreqServer(free[0], owner, fd, mmap.mmap(fd, ioreq.PAGE_SIZE), ports)
        server.write_eports()
        for vcpu, port in enumerate(ports):
            self.ports[port] = (server, vcpu)
        self.servers[server.id] = server
        self.log.info("ioreq server created", server=server.id, ports=ports)
        return server

    def map_range(self, server: SimIoreqServer, kind: int, start: int, end: int) -> None:
        rangeset = self._rangeset(server, kind, start, end)
        if rangeset.overlaps(start, end):
            raise XenError(errno.EEXIST, f"[{start:#x}, {end:#x}] overlaps a range of this server")
        for other in self.servers.values():
            if other is not server and other.ranges[kind].overlaps(start, end):
                raise XenError(errno.EEXIST, f"[{start:#x}, {end:#x}] is claimed by ioreq server {other.id}")
        rangeset.add(start, end)

    def unmap_range(self, server: SimIoreqServer, kind: int, start: int, end: int) -> None:
        rangeset = self._rangeset(server, kind, start, end)
        if not rangeset.contains(start, end):
            raise XenError(errno.ENOENT, f"[{start:#x}, {end:#x}] is not mapped to this server")
        rangeset.remove(start, end)

    @staticmethod
    def _rangeset(server: SimIoreqServer, kind: int, start: int, end: int) -> RangeSet:
        if kind not in (RANGE_PORT, RANGE_MMIO):
            raise XenError(errno.EINVAL, f"range type {kind} not supported (0 port, 1 MMIO)")
        if not 0 <= start <= end < 1 << 64 or (kind == RANGE_PORT and end > 0xFFFF):
            raise XenError(errno.EINVAL, f"bad range [{start:#x}, {end:#x}]")
        return server.ranges[kind]

    def set_server_state(self, server: SimIoreqServer, enabled: bool) -> None:
        if enabled and not server.enabled:
            server.write_eports()  # Xen refreshes vp_eport when a server is enabled
        server.enabled = enabled

    def destroy_server(self, server: SimIoreqServer) -> list[int]:
        self._require_alive()
        return self._drop_server(server)

    def _drop_server(self, server: SimIoreqServer) -> list[int]:
        ports = server.vcpu_ports
        for port in ports:
            self.ports.pop(port, None)
        self.servers.pop(server.id, None)
        server.close()
        for vcpu in self.vcpus:  # an access waiting on this server completes unhandled
            vcpu.wake.set()
        self.log.info("ioreq server destroyed", server=server.id)
        return ports

    def foreign_offset(self, gfn: int, nr: int) -> int:
        self._require_alive()
        off = self.layout.ram_offset(gfn << PAGE_SHIFT, nr << PAGE_SHIFT) if nr > 0 and gfn >= 0 else None
        if off is None:
            raise XenError(errno.EINVAL, f"gfns {gfn:#x}+{nr} are not one guest RAM range")
        return off

    # -- events ----------------------------------------------------------------------
    def event(self, xen_port: int) -> None:
        """The device model notified `xen_port`: wake the vCPU that waits on it."""
        entry = self.ports.get(xen_port)
        if entry is not None:
            self.vcpus[entry[1]].wake.set()

    # -- guest accesses --------------------------------------------------------------
    async def wait_running(self) -> None:
        """While paused, vCPUs do not run: accesses wait for unpause (or death)."""
        while self.state == PAUSED:
            await self._state_changed.wait()
        self._require_alive()

    def select(self, req: Request) -> SimIoreqServer | None:
        """Xen's `ioreq_server_select`: the enabled server whose range holds the whole access."""
        if req.type == ioreq.IOREQ_TYPE_PIO:
            kind, end = RANGE_PORT, req.addr + req.size - 1
        else:
            kind, end = RANGE_MMIO, req.addr + req.size * req.count - 1
        for server in self.servers.values():
            if server.enabled and server.ranges[kind].contains(req.addr, end):
                return server
        return None

    async def access(self, vcpu_index: int, req: Request) -> tuple[int, bool]:
        """Run one vCPU access; return (data for the guest, trapped to an ioreq server)."""
        await self.wait_running()
        vcpu = self.vcpus[vcpu_index]
        if vcpu.busy:
            raise XenError(errno.EBUSY, f"vcpu {vcpu_index} already has an access in flight")
        vcpu.busy = True
        try:
            if req.type == ioreq.IOREQ_TYPE_COPY and self.layout.ram_offset(req.addr, req.size) is not None:
                return perform(req, self.ram, self.ram), False
            if self.pmem_io is not None and self._is_pmem(req):
                return perform(req, self.pmem_io, self.ram), False
            server = self.select(req)
            if server is None:
                return perform(req, UNCLAIMED, self.ram), False
            return await self._send_ioreq(vcpu, server, req), True
        finally:
            vcpu.busy = False

    def _is_pmem(self, req: Request) -> bool:
        """A memory access landing on pmem: the p2m maps it, so it never traps."""
        return (req.type == ioreq.IOREQ_TYPE_COPY and self.pmem_io is not None
                and self.physmap.pmem_mfn(req.addr >> PAGE_SHIFT) is not None)

    async def _send_ioreq(self, vcpu: Vcpu, server: SimIoreqServer, req: Request) -> int:
        """Xen's `ioreq_send` then `wait_for_io` on this vCPU's slot (`pmemd.sim.ioreq`)."""
        page, port = server.page, server.vcpu_ports[vcpu.index]
        refused = ioreq.refuse_send(page, vcpu.index, port)
        if refused is not None:
            return self._bad_dm(refused)
        ioreq.send(page, vcpu.index, port, req)
        vcpu.wake = trio.Event()
        self._notify(self, port)
        seen = ioreq.STATE_IOREQ_READY
        while True:
            await vcpu.wake.wait()
            vcpu.wake = trio.Event()
            if not self.alive:
                raise DomainDead(f"domain {self.domid} is {self.state}")
            if server.destroyed:
                self.log.warning("ioreq server destroyed with an access in flight", server=server.id)
                return all_ones(req.size) if req.is_read and not req.data_is_ptr else req.data
            state = ioreq.state_of(page[ioreq.slot_offset(vcpu.index) + ioreq.BITS_OFFSET])
            step, reason = ioreq.wait_for_io(seen, state)
            if step is ioreq.Wait.WAIT:
                seen = state
                continue
            if step is ioreq.Wait.CRASH:
                return self._bad_dm(reason)
            data = ioreq.take_response(page, vcpu.index)
            return data if ioreq.needs_completion(req) else req.data

    def _bad_dm(self, reason: str) -> int:
        self.crash(reason)
        raise DomainDead(f"domain {self.domid} crashed: {reason}")
