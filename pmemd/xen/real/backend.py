"""`DeviceModelHypervisor` on real Xen: DMOPs, foreign mappings and event channels via ctypes.

The calls are ioctls on /dev/xen/privcmd and /dev/xen/evtchn that return at once, so they
run inline in the trio task; the only wait, an event, is `trio.lowlevel.wait_readable` on
the evtchn fd (one fd for every vCPU's port, no thread per vCPU), or within a burst of traps
a poll of a few milliseconds (`event_fd`). Mappings stay valid until `aclose()`.
"""

from __future__ import annotations

import ctypes as C
import errno
import mmap
import os
from collections.abc import Sequence

import structlog
import trio

from pmemd.ioreq import abi
from pmemd.xen.api import DeviceModelHypervisor, DomainInfo, EventChannel, IoreqServerInfo, PlatformEvents
from pmemd.xen.errors import DomainCrashed, HypervisorError
from pmemd.xen.page import PAGE_SHIFT, PAGE_SIZE

from . import domctl
from .event_fd import EventFd
from .libs import ULONG, XenLibs, check, load

log = structlog.get_logger("pmemd.xen.real")

XENMEM_RESOURCE_IOREQ_SERVER = 0
RW = mmap.PROT_READ | mmap.PROT_WRITE
XENSTORED_SOCKET = "/run/xenstored/socket"


def _view(address: int, length: int) -> memoryview:
    return memoryview((C.c_char * length).from_address(address)).cast("B")


class XenEventChannel(EventChannel):
    """One `xenevtchn_handle`: every vCPU's port on one fd, waited on with trio."""

    def __init__(self, libs: XenLibs, domid: int) -> None:
        self.f = libs.f
        self.domid = domid
        self.handle: int | None = check(self.f["xenevtchn_open"](None, 0), "xenevtchn_open")
        self.fd = self.f["xenevtchn_fd"](self.handle)
        self.bound: set[int] = set()
        self.events = EventFd(self.fd)
        self._notify = self.f["xenevtchn_notify"]

    async def bind_interdomain(self, remote_port: int) -> int:
        port = check(self.f["xenevtchn_bind_interdomain"](self.handle, self.domid, remote_port),
                     "xenevtchn_bind_interdomain")
        self.bound.add(port)
        await trio.lowlevel.checkpoint()
        return port

    async def unbind(self, local_port: int) -> None:
        check(self.f["xenevtchn_unbind"](self.handle, local_port), "xenevtchn_unbind")
        self.bound.discard(local_port)
        await trio.lowlevel.checkpoint()

    async def pending(self) -> list[int]:
        if self.handle is None:
            raise trio.ClosedResourceError("event channel closed")
        return await self.events.pending()

    def next_in_burst(self) -> list[int]:
        return self.events.next_in_burst() if self.handle is not None else []

    def unmask(self, ports: list[int]) -> None:
        if self.handle is not None:
            self.events.unmask(ports)

    def notify(self, local_port: int) -> None:
        check(self._notify(self.handle, local_port), "xenevtchn_notify")

    def close(self) -> None:
        if self.handle is not None:
            log.info("event channel closed", ports=sorted(self.bound), **self.events.waits)
            trio.lowlevel.notify_closing(self.fd)
            self.f["xenevtchn_close"](self.handle)
            self.handle = None


class XenPlatformEvents(PlatformEvents):
    """Upstream Xen gives a secondary device model no GPE or vMCE control (QEMU-xen owns the
    ACPI GPE block; vMCE injection is a toolstack domctl): GPEs and poison are recorded and
    logged, never delivered. Guests learn about media errors through ARS (`_DSM`), which works."""

    def __init__(self) -> None:
        self.gpes_dropped = 0
        self.poison: list[tuple[int, int]] = []

    def raise_gpe(self, gpe: int) -> None:
        self.gpes_dropped += 1
        log.warning("GPE not delivered: upstream Xen has no device-model GPE control", gpe=gpe)

    def set_poison(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.poison = list(ranges)
        log.info("poison recorded (no vMCE on upstream Xen; ARS reports it)", ranges=len(self.poison))

    def close(self) -> None:
        pass


class XenHypervisor(DeviceModelHypervisor):
    """Domain `domid` through libxendevicemodel, libxenforeignmemory, libxenevtchn and libxenctrl."""

    def __init__(self, domid: int, ram: tuple[int, int]) -> None:
        self.domid = domid
        self.ram = ram  # (lowmem, highmem) from libxl's memory keys
        self.libs = load()
        f = self.f = self.libs.f
        self.dm = check(f["xendevicemodel_open"](None, 0), "xendevicemodel_open")
        self.fm = check(f["xenforeignmemory_open"](None, 0), "xenforeignmemory_open")
        self.xc = check(f["xc_interface_open"](None, None, 0), "xc_interface_open")
        self._resources: list[int] = []
        self._maps: list[tuple[int, int]] = []  # (address, pages)
        self._channels: list[XenEventChannel] = []

    # -- ioreq servers -------------------------------------------------------------------

    async def create_ioreq_server(self, handle_bufioreq: int = abi.HVM_IOREQSRV_BUFIOREQ_OFF) -> int:
        sid = C.c_uint16()
        check(self.f["xendevicemodel_create_ioreq_server"](self.dm, self.domid, handle_bufioreq, C.byref(sid)),
              "create_ioreq_server")
        await trio.lowlevel.checkpoint()
        return sid.value

    async def get_ioreq_server_info(self, server_id: int) -> IoreqServerInfo:
        port = C.c_uint32()
        # NULL gfn pointers: XEN_DMOP_no_gfns, the pages come from map_resource.
        check(self.f["xendevicemodel_get_ioreq_server_info"](self.dm, self.domid, server_id, None, None,
                                                            C.byref(port)), "get_ioreq_server_info")
        await trio.lowlevel.checkpoint()
        return IoreqServerInfo(None, None, None)

    async def map_ioreq_page(self, server_id: int) -> memoryview:
        address = C.c_void_p()
        resource = check(self.f["xenforeignmemory_map_resource"](
            self.fm, self.domid, XENMEM_RESOURCE_IOREQ_SERVER, server_id, abi.IOREQ_RESOURCE_FRAME_SYNC, 1,
            C.byref(address), RW, 0), "map_resource(ioreq server)")
        self._resources.append(resource)
        await trio.lowlevel.checkpoint()
        assert address.value is not None
        return _view(address.value, PAGE_SIZE)

    async def map_io_range(self, server_id: int, is_mmio: bool, start: int, end_inclusive: int) -> None:
        check(self.f["xendevicemodel_map_io_range_to_ioreq_server"](
            self.dm, self.domid, server_id, int(is_mmio), start, end_inclusive), "map_io_range_to_ioreq_server")
        await trio.lowlevel.checkpoint()

    async def unmap_io_range(self, server_id: int, is_mmio: bool, start: int, end_inclusive: int) -> None:
        check(self.f["xendevicemodel_unmap_io_range_from_ioreq_server"](
            self.dm, self.domid, server_id, int(is_mmio), start, end_inclusive), "unmap_io_range_from_ioreq_server")
        await trio.lowlevel.checkpoint()

    async def set_ioreq_server_state(self, server_id: int, enabled: bool) -> None:
        check(self.f["xendevicemodel_set_ioreq_server_state"](self.dm, self.domid, server_id, int(enabled)),
              "set_ioreq_server_state")
        await trio.lowlevel.checkpoint()

    async def destroy_ioreq_server(self, server_id: int) -> None:
        check(self.f["xendevicemodel_destroy_ioreq_server"](self.dm, self.domid, server_id), "destroy_ioreq_server")
        await trio.lowlevel.checkpoint()

    async def open_event_channel(self) -> EventChannel:
        chan = XenEventChannel(self.libs, self.domid)
        self._channels.append(chan)
        await trio.lowlevel.checkpoint()
        return chan

    # -- guest memory --------------------------------------------------------------------

    async def map_foreign(self, gfn: int, nr_pages: int) -> memoryview:
        """Map populated frames; any frame that is not (a hole, MMIO) fails the whole call."""
        pfns = (ULONG * nr_pages)(*range(gfn, gfn + nr_pages))
        errs = (C.c_int * nr_pages)()
        address = self.f["xenforeignmemory_map"](self.fm, self.domid, RW, nr_pages, pfns, errs)
        check(address, f"xenforeignmemory_map({gfn:#x}, {nr_pages})")
        bad = [i for i in range(nr_pages) if errs[i]]
        if bad:
            self.f["xenforeignmemory_unmap"](self.fm, address, nr_pages)
            raise HypervisorError(-errs[bad[0]] or errno.EFAULT,
                                  f"gfn {gfn + bad[0]:#x} is not mapped RAM ({len(bad)} of {nr_pages} frames)")
        self._maps.append((address, nr_pages))
        await trio.lowlevel.checkpoint()
        return _view(address, nr_pages << PAGE_SHIFT)

    async def populate_ram(self, gfn: int, nr_pages: int) -> None:
        """Raise the domain's memory limit by `nr_pages` and populate gfn.. (as QEMU does for VRAM)."""
        raw = self._raw_info()
        max_kb = (raw.max_pages + nr_pages) << (PAGE_SHIFT - 10)
        check(self.f["xc_domain_setmaxmem"](self.xc, self.domid, max_kb), "xc_domain_setmaxmem")
        done = 0
        while done < nr_pages:  # chunks bound the pfn array
            n = min(nr_pages - done, 1 << 18)
            pfns = (ULONG * n)(*range(gfn + done, gfn + done + n))
            check(self.f["xc_domain_populate_physmap_exact"](self.xc, self.domid, n, 0, 0, pfns),
                  f"xc_domain_populate_physmap_exact({gfn + done:#x}, {n})")
            done += n
            await trio.lowlevel.checkpoint()

    async def populate_pmem_map(self, mfn: int, gfn: int, nr_mfns: int) -> None:
        raise HypervisorError(errno.EOPNOTSUPP, "upstream Xen has no XENMEM_populate_pmem_map: "
                                                "use [pmem] mode = \"mirrored\"")

    async def open_platform(self) -> PlatformEvents:
        await trio.lowlevel.checkpoint()
        return XenPlatformEvents()

    async def shutdown(self, reason: int) -> None:
        check(self.f["xendevicemodel_shutdown"](self.dm, self.domid, reason), "xendevicemodel_shutdown")
        await trio.lowlevel.checkpoint()

    # -- domain --------------------------------------------------------------------------

    def _raw_info(self) -> domctl.RawDomainInfo:
        buf = C.create_string_buffer(domctl.GETDOMAININFO_BUFFER)
        n = check(self.f["xc_domain_getinfolist"](self.xc, self.domid, 1, buf), "xc_domain_getinfolist")
        raw = domctl.parse_getdomaininfo(buf.raw)
        if n < 1 or raw.domid != self.domid:
            raise DomainCrashed(f"domain {self.domid} does not exist")
        return raw

    async def domain_info(self) -> DomainInfo:
        raw = self._raw_info()
        if not raw.hvm:
            raise HypervisorError(errno.EINVAL, f"domain {self.domid} is not an HVM guest")
        await trio.lowlevel.checkpoint()
        return domctl.domain_info(raw, *self.ram)

    async def aclose(self) -> None:
        for chan in self._channels:
            chan.close()
        for address, pages in self._maps:
            self.f["xenforeignmemory_unmap"](self.fm, address, pages)
        for resource in self._resources:
            self.f["xenforeignmemory_unmap_resource"](self.fm, resource)
        self._maps.clear()
        self._resources.clear()
        self.f["xc_interface_close"](self.xc)
        self.f["xenforeignmemory_close"](self.fm)
        self.f["xendevicemodel_close"](self.dm)
        await trio.lowlevel.checkpoint()


async def connect(spec: str, domid: int) -> DeviceModelHypervisor:
    """The `xen` backend of `pmemd.xen.backends` (`spec` is "xen"). The guest's RAM size comes
    from the keys libxl wrote (`memory/static-max`, `memory/videoram`) in xenstored at
    `$XENSTORED_PATH` (default /run/xenstored/socket)."""
    hv = XenHypervisor(domid, (0, 0))
    try:
        hv.ram = await read_libxl_ram(os.environ.get("XENSTORED_PATH", XENSTORED_SOCKET), domid)
    except BaseException:
        await hv.aclose()
        raise
    return hv


async def read_libxl_ram(socket: str, domid: int) -> tuple[int, int]:
    from pmemd.xenstore import open_client
    from pmemd.xenstore.errors import XenstoreError

    base = f"/local/domain/{domid}/memory"
    try:
        async with open_client(socket) as xs:
            static_max = int(await xs.read(f"{base}/static-max"))
            try:
                videoram = max(0, int(await xs.read(f"{base}/videoram")))
            except XenstoreError:
                videoram = 0
    except (OSError, XenstoreError, ValueError) as e:
        raise HypervisorError(errno.ENOENT, f"cannot read domain {domid}'s memory size from xenstored at "
                                            f"{socket} ({base}/static-max): {e}") from None
    return domctl.libxl_ram(static_max, videoram)
