"""Per-domain platform state the device model drives: pending GPEs and vMCE poison.

Each domain's `SimPlatform` is a memfd holding a `pmemd.sim.platform_page` page, created on
first use: the device model maps it (op `platform_map`) and writes it while serving an access;
the simulator reads it on the guest's side. A guest read overlapping a poisoned range fails
with EHWPOISON — the machine check Xen would inject (vMCE) — instead of returning data;
writes are not checked, since storing to a poisoned line does not consume the poison.
"""

from __future__ import annotations

import errno
import mmap
import os

from pmemd.sim import platform_page, wire
from pmemd.sim.errors import XenError
from pmemd.sim.hv_domain import Domain
from pmemd.sim.ioreq import IOREQ_READ, Request

EHWPOISON = getattr(errno, "EHWPOISON", 133)


class SimPlatform:
    """One domain's platform page, owned by the simulator."""

    def __init__(self, domid: int) -> None:
        self.fd = os.memfd_create(f"xen-dom{domid}-platform", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, platform_page.PAGE_BYTES)
        self.map = mmap.mmap(self.fd, platform_page.PAGE_BYTES)
        platform_page.initialise(memoryview(self.map))
        self.reader = platform_page.PlatformReader(memoryview(self.map))
        self.gpes_taken = 0

    def take_gpes(self) -> list[int]:
        gpes = self.reader.take_gpes()
        self.gpes_taken += len(gpes)
        return gpes

    def check_read(self, req: Request, space: int) -> None:
        """Refuse (EHWPOISON) a guest memory read that meets a poisoned range."""
        if space != wire.SPACE_MMIO or req.dir != IOREQ_READ or req.data_is_ptr:
            return
        length = req.size * req.count
        start = req.addr - (length - req.size if req.df else 0)
        hit = self.reader.poisoned(start, length)
        if hit is not None:
            raise XenError(
                EHWPOISON,
                f"machine check: read [{start:#x}, +{length}) consumed poison at [{hit[0]:#x}, +{hit[1]:#x})",
            )

    def close(self) -> None:
        self.reader = platform_page.PlatformReader(bytearray(platform_page.HEADER_SIZE))
        try:
            self.map.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes with it
        os.close(self.fd)


class Platforms:
    """The platform page of every domain that has one, keyed by the domain object."""

    def __init__(self) -> None:
        self._pages: dict[int, tuple[Domain, SimPlatform]] = {}

    def of(self, dom: Domain) -> SimPlatform:
        """The domain's page, created on first use (a re-created domid gets a fresh one)."""
        entry = self._pages.get(dom.domid)
        if entry is not None and entry[0] is dom:
            return entry[1]
        if entry is not None:
            entry[1].close()
        platform = SimPlatform(dom.domid)
        self._pages[dom.domid] = (dom, platform)
        return platform

    def find(self, dom: Domain) -> SimPlatform | None:
        entry = self._pages.get(dom.domid)
        return entry[1] if entry is not None and entry[0] is dom else None

    def drop(self, dom: Domain) -> None:
        entry = self._pages.get(dom.domid)
        if entry is not None and entry[0] is dom:
            del self._pages[dom.domid]
            entry[1].close()

    def check_read(self, dom: Domain, req: Request, space: int) -> None:
        platform = self.find(dom)
        if platform is not None:
            platform.check_read(req, space)
