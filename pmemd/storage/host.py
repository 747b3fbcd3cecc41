"""The host pmem a backing file lives on: where its bytes are in host physical memory, and
which of those frames a guest may be given.

Xen's vNVDIMM design splits each host pmem region into a *data* area (guest-mappable) and
a *reserved/management* area (Xen's frame table and M2P for the region; never mapped).
FIEMAP gives byte offsets on the filesystem's block device; `spa_base` is the host
physical address of that device's byte 0, so mfn = (spa_base + physical) / 4 KiB.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pmemd.host_pmem import HostPmemRegion

from .errors import HostPmemError
from .pfn import PfnInfo

SECTOR_SIZE = 512  # sysfs `size` and `start` are in 512-byte sectors


class HostPmem(HostPmemRegion):
    """The host pmem region a backing file lives on (`pmemd.host_pmem`), and the daemon's rule for it.

    Mappable frames are those of the data area not inside the reserved area (the two may
    be given disjoint, as Xen's region lists are, or the reserved area carved out of data).
    """

    @classmethod
    def invalid(cls, message: str) -> Exception:
        return HostPmemError(message)

    def first_refused(self, mfn: int, nr: int) -> tuple[int, str] | None:
        """The first frame of [mfn, mfn+nr) a guest may not have, and why; None if all may."""
        data, reserved = self.data_frames, self.reserved_frames
        if mfn in reserved or (reserved and mfn < reserved.start < mfn + nr):
            bad = max(mfn, reserved.start)
            return bad, f"is in the host's reserved/management area [{reserved.start:#x}, {reserved.stop:#x})"
        if mfn not in data:
            return mfn, f"is outside the host's pmem data area [{data.start:#x}, {data.stop:#x})"
        if mfn + nr > data.stop:
            return data.stop, f"is outside the host's pmem data area [{data.start:#x}, {data.stop:#x})"
        return None

    @classmethod
    def from_pfn_info(cls, device: str, namespace_spa: int, namespace_size: int, info: PfnInfo) -> HostPmem:
        """An fsdax/devdax namespace: metadata up to `dataoff` is reserved, the rest is data.

        The namespace's block device (/dev/pmemN) starts at the data area, so that is `spa_base`.
        """
        start = namespace_spa + info.start_pad
        data_start = start + info.dataoff
        data_end = namespace_spa + namespace_size - info.end_trunc
        if data_start >= data_end:
            raise HostPmemError(
                f"{device}: info block data offset {info.dataoff:#x} leaves no data in a "
                f"{namespace_size:#x}-byte namespace"
            )
        return cls(device, data_start, data_start, data_end, namespace_spa, data_start)


def discover(path: str | Path, *, sysfs: Path = Path("/sys"), reserved: tuple[int, int] = (0, 0)) -> HostPmem:
    """Find the host pmem under a backing file (or a pmem block device) through sysfs.

    Reads /sys/dev/block/MAJ:MIN: for a partition, its `start` offset and its disk; the
    disk's `device` must be an nd (libnvdimm) namespace whose `resource` is its SPA. The
    reserved area cannot be learnt from sysfs and is passed in (SPA bytes).
    """
    st = os.stat(path)
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    majmin = f"{os.major(dev)}:{os.minor(dev)}"
    node = sysfs / "dev" / "block" / majmin
    if not node.exists():
        raise HostPmemError(f"{path}: block device {majmin} has no sysfs entry ({node} is missing)")
    node = node.resolve()
    offset = 0
    disk = node
    if (node / "partition").exists():
        offset = _read_int(node / "start") * SECTOR_SIZE
        disk = node.parent
    size = _read_int(node / "size") * SECTOR_SIZE
    device = disk / "device"
    subsystem = device / "subsystem"
    if not subsystem.exists() or subsystem.resolve().name != "nd":
        bus = subsystem.resolve().name if subsystem.exists() else "none"
        raise HostPmemError(
            f"{path} is on {disk.name} ({majmin}), which is not a pmem device (bus {bus!r}, not 'nd'); "
            f"describe the host pmem explicitly"
        )
    resource = device / "resource"
    if not resource.exists():
        raise HostPmemError(f"{path}: pmem device {disk.name} has no {resource}; describe the host pmem explicitly")
    spa_base = int(resource.read_text().strip(), 0) + offset
    return HostPmem(f"/dev/{disk.name}", spa_base, spa_base, spa_base + size, *reserved)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip(), 0)
    except (OSError, ValueError) as e:
        raise HostPmemError(f"cannot read an integer from {path}: {e}") from None
