"""A host pmem region: where a block device's bytes sit in host physical memory, and which of
them a guest may be given. One record for both worlds: the daemon's storage layer (which frames it
asks Xen to map) and the simulated hypervisor (which frames it lets be mapped) describe the same host.

As in Xen's vNVDIMM design (reference §2.2), a region has a *data* area (guest-mappable) and a
*reserved/management* area (Xen's frame table and M2P for the region; never mapped). Addresses
are host physical (SPA) bytes, ranges [start, end), every one a multiple of 4 KiB; `spa_base`
is the SPA of the device's byte 0, so FIEMAP's physical offset b lies in frame (spa_base + b) >> 12.

Only the facts live here. What may be mapped is a rule, and each side keeps its own
(`pmemd.storage.host.HostPmem.first_refused`, `pmemd.sim.hv_pmem.HostPmem.check_frames`).
A side reports an inconsistent description in its own error (`invalid`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pmemd.xen.page import PAGE_SHIFT, PAGE_SIZE


@dataclass(frozen=True)
class HostPmemRegion:
    """One host pmem device: its SPA base, data area and reserved area (possibly empty)."""

    device: str  # the block device (path or "MAJ:MIN"), for messages
    spa_base: int
    data_start: int
    data_end: int
    reserved_start: int = 0
    reserved_end: int = 0

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise self.invalid(f"{self.device}: {problem}")

    def problem(self) -> str | None:
        """What makes the description inconsistent, or None."""
        for name in ("spa_base", "data_start", "data_end", "reserved_start", "reserved_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % PAGE_SIZE:
                shown = f"{value:#x}" if isinstance(value, int) else repr(value)
                return f"{name} {shown} must be a non-negative multiple of 4 KiB"
        if self.data_start >= self.data_end:
            return f"data area [{self.data_start:#x}, {self.data_end:#x}) is empty"
        if self.reserved_start > self.reserved_end:
            return f"reserved area [{self.reserved_start:#x}, {self.reserved_end:#x}) ends before it starts"
        return None

    @classmethod
    def invalid(cls, message: str) -> Exception:
        """The error an inconsistent description raises; each side overrides it with its own."""
        return ValueError(message)

    @property
    def data_frames(self) -> range:
        return range(self.data_start >> PAGE_SHIFT, self.data_end >> PAGE_SHIFT)

    @property
    def reserved_frames(self) -> range:
        return range(self.reserved_start >> PAGE_SHIFT, self.reserved_end >> PAGE_SHIFT)
