"""What the daemon needs from Xen, as an abstract async interface.

One `DeviceModelHypervisor` is the daemon's view of its one guest: the
libxendevicemodel calls (DMOPs, reference §1.6), `xenforeignmemory` mappings and
`xenevtchn` handles. `pmemd.sim.client.device_model` implements it over the simulator socket,
`pmemd.xen.real.backend` on real Xen (ctypes over the libraries). Calls that may block are
async; `EventChannel.notify` never blocks (it is an ioctl in libxenevtchn), so it is sync.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from pmemd.ioreq.abi import HVM_IOREQSRV_BUFIOREQ_OFF
from pmemd.xen.errors import HypervisorError

# xendevicemodel_shutdown reasons (public/sched.h SHUTDOWN_*).
SHUTDOWN_POWEROFF = 0
SHUTDOWN_REBOOT = 1
SHUTDOWN_SUSPEND = 2
SHUTDOWN_CRASH = 3
SHUTDOWN_WATCHDOG = 4


@dataclass(frozen=True)
class DomainInfo:
    """A domain's state ("paused", "running", "crashed", "shutdown", "destroyed") and memory map."""

    domid: int
    state: str
    crash_reason: str | None
    shutdown_reason: int | None
    lowmem: int
    highmem: int
    mmio_hole: int
    vcpus: int
    ioreq_servers: tuple[int, ...] = ()

    def ram_ranges(self) -> list[tuple[int, int]]:
        """Guest RAM as [start, end) GPA ranges."""
        ranges = [(0, self.lowmem)]
        if self.highmem:
            ranges.append((1 << 32, (1 << 32) + self.highmem))
        return ranges


@dataclass(frozen=True)
class IoreqServerInfo:
    """`get_ioreq_server_info` with XEN_DMOP_no_gfns: pages come from map_ioreq_page."""

    ioreq_gfn: int | None
    bufioreq_gfn: int | None
    bufioreq_port: int | None


class EventChannel(ABC):
    """A `xenevtchn_handle`: bind remote ports, wait for pending local ports, notify."""

    @abstractmethod
    async def bind_interdomain(self, remote_port: int) -> int:
        """Bind the guest's Xen-side `remote_port`; return the local port."""

    @abstractmethod
    async def unbind(self, local_port: int) -> None: ...

    @abstractmethod
    async def pending(self) -> list[int]:
        """Wait until at least one local port fired; return all that did. They may stay masked
        (no further event on them) until `unmask`."""

    def next_in_burst(self) -> list[int]:
        """The ports that fire within a short window after the last batch was served, without
        a trio checkpoint (a burst of traps then costs no scheduler pass per trap); [] when none
        did. By default no burst path."""
        return []

    def unmask(self, ports: list[int]) -> None:  # noqa: B027 - by default ports never mask
        """Let `ports`, returned by `pending` or `next_in_burst`, fire again."""

    @abstractmethod
    def notify(self, local_port: int) -> None:
        """Signal the remote end of `local_port`; never blocks."""

    @abstractmethod
    def close(self) -> None: ...


class PlatformEvents(ABC):
    """Guest-platform effects a device model causes while serving an access: SCI/GPE and vMCE.

    Both are sync and never block, like `EventChannel.notify`: on Xen they are DMOPs (ioctls)
    made before the ioreq completes, so the guest's next instruction sees them.
    """

    @abstractmethod
    def raise_gpe(self, gpe: int) -> None:
        """Set GPE `gpe`'s status bit and raise the SCI; the guest runs `\\_GPE._Exx`."""

    @abstractmethod
    def set_poison(self, ranges: Sequence[tuple[int, int]]) -> None:
        """The guest's poisoned (start, length) ranges: reads there take a machine check."""

    @abstractmethod
    def close(self) -> None: ...


class DeviceModelHypervisor(ABC):
    """The hypervisor as one guest's device model sees it (domid fixed at connect)."""

    domid: int

    @abstractmethod
    async def create_ioreq_server(self, handle_bufioreq: int = HVM_IOREQSRV_BUFIOREQ_OFF) -> int: ...

    @abstractmethod
    async def get_ioreq_server_info(self, server_id: int) -> IoreqServerInfo: ...

    @abstractmethod
    async def map_ioreq_page(self, server_id: int) -> memoryview:
        """Writable view of the synchronous page (resource frame 1): 128 `ioreq_t` slots."""

    @abstractmethod
    async def map_io_range(self, server_id: int, is_mmio: bool, start: int, end_inclusive: int) -> None: ...

    @abstractmethod
    async def unmap_io_range(self, server_id: int, is_mmio: bool, start: int, end_inclusive: int) -> None: ...

    @abstractmethod
    async def set_ioreq_server_state(self, server_id: int, enabled: bool) -> None: ...

    @abstractmethod
    async def destroy_ioreq_server(self, server_id: int) -> None: ...

    @abstractmethod
    async def open_event_channel(self) -> EventChannel: ...

    @abstractmethod
    async def map_foreign(self, gfn: int, nr_pages: int) -> memoryview:
        """Writable view of guest RAM gfn..gfn+nr_pages-1 (must be one RAM range)."""

    async def populate_ram(self, gfn: int, nr_pages: int) -> None:
        """Give the guest `nr_pages` new RAM frames at gfn.. (raising its memory limit by as
        much), as QEMU populates VRAM: the `ram` DSM page in the MMIO hole and mirrored PMEM.
        A backend that cannot raises EOPNOTSUPP, so the mode fails at start."""
        raise HypervisorError(errno.EOPNOTSUPP, f"this hypervisor backend cannot populate guest RAM at {gfn:#x}")

    @abstractmethod
    async def populate_pmem_map(self, mfn: int, gfn: int, nr_mfns: int) -> None:
        """XENMEM_populate_pmem_map: map host pmem frames mfn.. at gfn.. (no unmap; they go
        with the domain). Errors: ENXIO outside host pmem data, EBUSY frame owned, EEXIST gfns taken."""

    @abstractmethod
    async def open_platform(self) -> PlatformEvents:
        """The guest's GPE and vMCE controls (`PlatformEvents`)."""

    @abstractmethod
    async def shutdown(self, reason: int) -> None:
        """`xendevicemodel_shutdown`: ask Xen to shut the guest down (SHUTDOWN_*)."""

    @abstractmethod
    async def domain_info(self) -> DomainInfo: ...

    @abstractmethod
    async def aclose(self) -> None: ...
