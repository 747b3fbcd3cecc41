"""Decoding what libxenctrl and libxl's xenstore keys say about a domain.

Pure functions, so the layouts are tested without Xen: `xen_domctl_getdomaininfo` as in Xen
4.17's `public/domctl.h` (interface version 0x15), and the RAM layout libxl derives from the
domain's memory keys (libxc 4.17 exports no call that reads another domain's e820 map).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pmemd.xen.api import DomainInfo

# struct xen_domctl_getdomaininfo: domain u16 @0, flags u32 @4, tot_pages @8, max_pages @16,
# outstanding @24, shr @32, paged @40, shared_info_frame @48, cpu_time @56 (all u64),
# nr_online_vcpus u32 @64, max_vcpu_id u32 @68. The rest (ssidref, handle, cpupool, arch) is unused.
GETDOMAININFO = struct.Struct("<H2xIQQQQQQQII")
GETDOMAININFO_BUFFER = 256  # bytes handed to xc_domain_getinfolist: more than the 4.17 struct
DOMINF_DYING = 1 << 0
DOMINF_HVM = 1 << 1
DOMINF_SHUTDOWN = 1 << 2
DOMINF_PAUSED = 1 << 3
DOMINF_SHUTDOWN_SHIFT = 16
SHUTDOWN_CRASH = 3

FOUR_GIB = 1 << 32


@dataclass(frozen=True)
class RawDomainInfo:
    domid: int
    flags: int
    tot_pages: int
    max_pages: int
    max_vcpu_id: int

    @property
    def hvm(self) -> bool:
        return bool(self.flags & DOMINF_HVM)

    @property
    def state(self) -> str:
        """pmemd's state names: a dying domain counts as destroyed (its memory is going)."""
        if self.flags & DOMINF_DYING:
            return "destroyed"
        if self.flags & DOMINF_SHUTDOWN:
            return "crashed" if self.shutdown_reason == SHUTDOWN_CRASH else "shutdown"
        return "paused" if self.flags & DOMINF_PAUSED else "running"

    @property
    def shutdown_reason(self) -> int | None:
        return (self.flags >> DOMINF_SHUTDOWN_SHIFT) & 0xFF if self.flags & DOMINF_SHUTDOWN else None


def parse_getdomaininfo(buf: bytes) -> RawDomainInfo:
    domid, flags, tot, maxp, _out, _shr, _paged, _sif, _cpu, _online, max_vcpu_id = GETDOMAININFO.unpack_from(buf)
    return RawDomainInfo(domid, flags, tot, maxp, max_vcpu_id)



LIBXL_MMIO_START = 0xF0000000  # libxl's HVM RAM ends here below 4 GiB unless xl's mmio_hole says otherwise


def libxl_ram(static_max_kib: int, videoram_kib: int) -> tuple[int, int]:
    """(lowmem, highmem) as libxl lays out an HVM guest's RAM: `memory/static-max` less
    `memory/videoram` (both KiB, in xenstore), below 4 GiB up to the MMIO hole, the rest above."""
    total = (static_max_kib - videoram_kib) << 10
    lowmem = min(total, LIBXL_MMIO_START)
    return lowmem, total - lowmem


def domain_info(raw: RawDomainInfo, lowmem: int, highmem: int) -> DomainInfo:
    return DomainInfo(raw.domid, raw.state, None, raw.shutdown_reason, lowmem, highmem,
                      FOUR_GIB - LIBXL_MMIO_START, raw.max_vcpu_id + 1)
