"""`[pmem] mode = "mirrored"`: guest PMEM in populated guest frames, written back to the files.

`open_mirrors` populates each NVDIMM's range (raising the domain's memory limit), maps it,
fills it from the backing file, and serves each DIMM's NFIT flush-hint register through its
own ioreq server: a guest flush-hint write returns only after that DIMM's changes are in
the file and fdatasync'ed. Changes are also written back every `writeback_interval` and when
the daemon stops (SIGTERM, domain destroyed: the daemon's mapping keeps the frames readable
until it is dropped). A restarted daemon finds the frames populated and adopts them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog
import trio

from pmemd.config import Config
from pmemd.ioreq.device import IoRange
from pmemd.ioreq.server import IoreqServer
from pmemd.storage.mirror import Mirror
from pmemd.xen.api import DeviceModelHypervisor
from pmemd.xen.errors import HypervisorError
from pmemd.xen.page import PAGE_SHIFT

log = structlog.get_logger("pmemd.pmem")

FLUSH_HINT_WIDTH = 8


class FlushHintDevice:
    """The DIMMs' flush-hint registers: any write runs that DIMM's write-back; reads are 0."""

    def __init__(self, mirrors: dict[int, Mirror]) -> None:
        self.mirrors = mirrors  # flush-hint GPA -> mirror

    def io_ranges(self) -> Sequence[IoRange]:
        return [IoRange(True, gpa, gpa + FLUSH_HINT_WIDTH - 1) for gpa in sorted(self.mirrors)]

    def _mirror(self, addr: int) -> Mirror:
        return self.mirrors[addr & ~(FLUSH_HINT_WIDTH - 1)]

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        mirror = self._mirror(addr)
        written = mirror.write_back()
        log.info("flush hint: written back", backing=str(mirror.path), bytes=written)

    def mmio_read(self, addr: int, size: int) -> int:
        return 0

    def port_read(self, port: int, size: int) -> int:
        raise ValueError("the flush-hint device has no ports")

    def port_write(self, port: int, size: int, value: int) -> None:
        raise ValueError("the flush-hint device has no ports")


async def guest_frames(hv: DeviceModelHypervisor, gpa: int, size: int) -> tuple[memoryview, bool]:
    """A mapping of guest frames [gpa, gpa + size): the ones a previous daemon populated
    (adopted: True), else newly populated ones (False)."""
    gfn, pages = gpa >> PAGE_SHIFT, size >> PAGE_SHIFT
    try:
        return await hv.map_foreign(gfn, pages), True
    except HypervisorError:
        pass
    await hv.populate_ram(gfn, pages)
    return await hv.map_foreign(gfn, pages), False


@contextlib.asynccontextmanager
async def open_mirrors(config: Config, hv: DeviceModelHypervisor, adopt: int | None = None
                       ) -> AsyncIterator[tuple[dict[int, Mirror], IoreqServer | None]]:
    """Mirror every NVDIMM (slot -> Mirror) while the block runs, with the flush-hint ioreq
    server (`adopt`: a killed predecessor's); write back on the way out."""
    mirrors: dict[int, Mirror] = {}
    try:
        for index, d in enumerate(config.nvdimms):
            view, adopted = await guest_frames(hv, d.address, d.pmem_size)
            mirror = Mirror(d.backing, view)
            mirrors[d.slot] = mirror
            if adopted:
                mirror.adopt()
            else:
                mirror.fill()
            log.info("pmem mirrored", nvdimm=index, backing=str(d.backing), gpa=hex(d.address), bytes=d.pmem_size,
                     adopted=adopted, flush_hint=hex(d.flush_hint or 0))
        hints = {d.flush_hint: mirrors[d.slot] for d in config.nvdimms if d.flush_hint is not None}
        device = FlushHintDevice(hints)
        server = IoreqServer(hv, device, device.io_ranges(), adopt=adopt) if hints else None
        async with trio.open_nursery() as nursery:
            if server is not None:
                await nursery.start(server.run)
            nursery.start_soon(_write_back_every, config.pmem.writeback_interval, mirrors)
            try:
                yield mirrors, server
            finally:
                nursery.cancel_scope.cancel()
    finally:  # synchronous: a cancellation cannot cut it short
        for slot, mirror in mirrors.items():
            try:
                written = mirror.write_back()
                log.info("pmem written back at stop", slot=slot, bytes=written, **vars(mirror.stats))
            except OSError as e:
                log.error("pmem write-back at stop failed", slot=slot, error=str(e))
            mirror.close()


async def _write_back_every(interval: float, mirrors: dict[int, Mirror]) -> None:
    while True:
        await trio.sleep(interval)
        for mirror in mirrors.values():
            mirror.write_back()
