"""Host pmem as the simulated hypervisor sees it: regions, frame ownership, the bytes of a frame.

There is no pmem here, so a region is the block device under a filesystem placed at
`spa_base` in host physical memory: the frame of device byte `b` is (spa_base + b) >> 12,
and FIEMAP's `fe_physical` is such a byte offset. As in Xen's v3+ design (reference §2.2)
a region has a DATA area (guest-mappable) and a reserved/management area (frame table and
M2P; never mapped), both in SPA bytes, [start, end).

To serve guest reads and writes of pmem-mapped GPAs the simulator resolves a frame back to
(file, offset) through its *own* FIEMAP of the files the region lists: one counting call
and one fetch, as the RFC's libxl did, independent of `pmemd.storage`'s streaming reader,
so a test comparing guest bytes with file bytes checks the daemon's arithmetic against a
second derivation. The frame index is rebuilt after frames are populated and whenever a
lookup misses; a file whose blocks move after that is not noticed (Xen would not notice
either: the frame keeps whatever bytes the device holds).

Errors follow XENMEM_populate_pmem_map (reference §2.3): ENXIO for frames outside every
DATA area (or inside a reserved one), EBUSY for a frame another domain has, EEXIST for a
gfn range that is not free, EINVAL for malformed arguments.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import mmap
import os
import struct
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pmemd.host_pmem import HostPmemRegion
from pmemd.sim.errors import XenError
from pmemd.sim.hv_physmap import IntervalMap, Physmap
from pmemd.xen.page import PAGE_SHIFT, PAGE_SIZE

log = structlog.get_logger("pmemd.sim.pmem")

UINT_MAX = (1 << 32) - 1  # nr_mfns is an unsigned int
# SPA base the examples and tests give the simulated host pmem (64 GiB, above any RAM).
DEFAULT_SPA_BASE = 0x10_0000_0000

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_HEADER = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")
# fe_flags whose extents do not hold the file's bytes plainly at fe_physical:
# UNKNOWN, DELALLOC, ENCODED, DATA_ENCRYPTED, NOT_ALIGNED, DATA_INLINE, DATA_TAIL, UNWRITTEN.
_NOT_PLAIN = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800


def _einval(message: str) -> XenError:
    return XenError(errno.EINVAL, message)


@dataclass(frozen=True)
class PmemRegion(HostPmemRegion):
    """One host pmem region (`pmemd.host_pmem`) as XENPF_pmem_add / xen-ndctl setup-data gives it
    to Xen, with the files on it whose frames the simulator can resolve."""

    files: tuple[Path, ...] = ()

    @classmethod
    def invalid(cls, message: str) -> Exception:
        return _einval(f"region {message}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], *, base_dir: Path = Path(".")) -> PmemRegion:
        """From a `host_pmem_add` request or a `[[region]]` table of a --host-pmem file."""
        unknown = set(m) - {"op", "device", "spa_base", "data", "reserved", "files"}
        if unknown:
            raise _einval(f"unknown region fields {sorted(unknown)}")
        device = m.get("device", "simulated")
        if not isinstance(device, str) or not device:
            raise _einval(f"region device must be a name, got {device!r}")
        spa_base = _number(m.get("spa_base", DEFAULT_SPA_BASE), "spa_base")
        files = m.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise _einval("region files must be a list of paths")
        paths = tuple(p if p.is_absolute() else base_dir / p for p in map(Path, files))
        if "data" in m:
            data_start, data_end = _pair(m["data"], "data")
        else:
            data_start, data_end = spa_base, spa_base + _device_size(device, paths)
        reserved = _pair(m["reserved"], "reserved") if "reserved" in m else (0, 0)
        return cls(device, spa_base, data_start, data_end, *reserved, files=paths)

    def as_dict(self) -> dict[str, Any]:
        return dict(device=self.device, spa_base=self.spa_base, data=[self.data_start, self.data_end],
                    reserved=[self.reserved_start, self.reserved_end], files=[str(p) for p in self.files])


def _number(value: Any, name: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise _einval(f"region {name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _einval(f"region {name} must be an integer, got {value!r}")
    return value


def _pair(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise _einval(f"region {name} must be [start, end] in SPA bytes, got {value!r}")
    return _number(value[0], name), _number(value[1], name)


def _device_size(device: str, files: tuple[Path, ...]) -> int:
    """Bytes of the block device (named, or under the first file) from sysfs, for a default data area."""
    try:
        st = os.stat(device) if device.startswith("/dev/") else os.stat(files[0]) if files else None
    except OSError:
        st = None
    if st is not None:
        dev = st.st_rdev if device.startswith("/dev/") else st.st_dev
        node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/size")
        try:
            return int(node.read_text()) * 512
        except (OSError, ValueError):
            pass
    raise _einval(f"region {device}: give its data area ([start, end]); the device size is unknown")


def load_host_pmem(path: str | os.PathLike[str]) -> list[PmemRegion]:
    """Read a `pmemd sim --host-pmem FILE`: TOML with one `[[region]]` table per region.

        [[region]]
        device = "/dev/vda"                    # for messages (and the default data size)
        spa_base = 0x1000000000                # SPA of the device's byte 0
        data = [0x1000000000, 0x2000000000]    # optional: default the whole device
        reserved = [0x1000000000, 0x1000200000]  # optional: never guest-mapped
        files = ["/srv/nv0.img"]               # files whose frames guest accesses resolve to
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise _einval(f"cannot read host pmem description {path}: {e}") from None
    regions = raw.get("region", [])
    if set(raw) - {"region"} or not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise _einval(f"{path}: expected only [[region]] tables")
    return [PmemRegion.from_mapping(r, base_dir=path.parent) for r in regions]


def fiemap_all(fd: int) -> list[tuple[int, int, int, int]]:
    """Every extent of `fd` as (logical, physical, length, flags): count, then fetch (libxl's way)."""
    header = bytearray(_FIEMAP_HEADER.size)
    _FIEMAP_HEADER.pack_into(header, 0, 0, (1 << 64) - 1, _FIEMAP_FLAG_SYNC, 0, 0, 0)
    fcntl.ioctl(fd, _FS_IOC_FIEMAP, header)
    count = _FIEMAP_HEADER.unpack_from(header)[3]
    if not count:
        return []
    buf = bytearray(_FIEMAP_HEADER.size + _FIEMAP_EXTENT.size * count)
    _FIEMAP_HEADER.pack_into(buf, 0, 0, (1 << 64) - 1, _FIEMAP_FLAG_SYNC, 0, count, 0)
    fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
    mapped = _FIEMAP_HEADER.unpack_from(buf)[3]
    return list(_FIEMAP_EXTENT.iter_unpack(memoryview(buf)[_FIEMAP_HEADER.size:][: _FIEMAP_EXTENT.size * mapped]))


@dataclass
class _File:
    path: Path
    map: mmap.mmap | None = None


class FrameIndex:
    """Device byte offset → (file, file offset) for one region's files, from FIEMAP."""

    def __init__(self, region: PmemRegion) -> None:
        self.region = region
        self.files: list[_File] = []
        self._physical: list[int] = []  # extent starts on the device, sorted
        self._extents: list[tuple[int, int, int, int]] = []  # (physical, length, file index, logical)

    def rebuild(self) -> None:
        self.close()
        rows = []
        for path in self.region.files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # not created yet: nothing of it can be mapped
            try:
                extents = fiemap_all(fd)
            except OSError as e:
                log.warning("FIEMAP failed; the file's frames cannot be resolved", file=str(path), error=e.strerror)
                continue
            finally:
                os.close(fd)
            index = len(self.files)
            self.files.append(_File(path))
            rows += [(phys, length, index, logical) for logical, phys, length, flags in extents if not flags & _NOT_PLAIN]
        rows.sort()
        self._extents = rows
        self._physical = [row[0] for row in rows]

    def lookup(self, device_offset: int) -> tuple[_File, int] | None:
        i = bisect.bisect_right(self._physical, device_offset) - 1
        if i < 0:
            return None
        physical, length, index, logical = self._extents[i]
        if device_offset >= physical + length:
            return None
        return self.files[index], logical + device_offset - physical

    def close(self) -> None:
        for f in self.files:
            if f.map is not None:
                f.map.close()
        self.files, self._physical, self._extents = [], [], []


@dataclass
class HostPmem:
    """All host pmem regions, which domain owns each frame, and frame contents."""

    regions: list[PmemRegion] = field(default_factory=list)
    owners: IntervalMap[int] = field(default_factory=IntervalMap)  # mfn runs -> domid
    _indexes: list[FrameIndex] = field(default_factory=list)
    _stale: bool = True
    generation: int = 0  # bumped whenever frame -> file resolution may have changed

    # -- regions ---------------------------------------------------------------------
    def add_region(self, region: PmemRegion) -> None:
        """Register a region; its SPA range may not overlap another region's."""
        lo = min(region.data_start, region.reserved_start or region.data_start)
        hi = max(region.data_end, region.reserved_end)
        for other in self.regions:
            olo = min(other.data_start, other.reserved_start or other.data_start)
            if lo < max(other.data_end, other.reserved_end) and olo < hi:
                raise XenError(errno.EEXIST, f"region {region.device} overlaps region {other.device}")
        self.regions.append(region)
        self._indexes.append(FrameIndex(region))
        self._stale = True
        log.info("host pmem region added", **region.as_dict())

    def check_frames(self, mfn: int, nr: int) -> None:
        """ENXIO unless [mfn, mfn+nr) lies in one DATA area and outside every reserved area."""
        for region in self.regions:
            reserved = region.reserved_frames
            if reserved and mfn < reserved.stop and reserved.start < mfn + nr:
                bad = max(mfn, reserved.start)
                raise XenError(
                    errno.ENXIO, f"host frame {bad:#x} is in the reserved/management area of {region.device}"
                )
        for region in self.regions:
            data = region.data_frames
            if data.start <= mfn and mfn + nr <= data.stop:
                return
        raise XenError(
            errno.ENXIO, f"host frames [{mfn:#x}, {mfn + nr:#x}) are not inside one host pmem data area"
        )

    # -- ownership ---------------------------------------------------------------------
    def claim(self, domid: int, mfn: int, nr: int) -> None:
        """Give [mfn, mfn+nr) to `domid`; EBUSY if any frame already belongs to a domain."""
        owned = self.owners.first_overlap(mfn, nr)
        if owned is not None:
            bad = max(mfn, owned.start)
            raise XenError(errno.EBUSY, f"host frame {bad:#x} already belongs to domain {owned.value}")
        self.owners.add(mfn, nr, domid)
        self._stale = True

    def release(self, domid: int) -> int:
        """Return every frame of `domid` to the host (domain destruction); the count released."""
        return sum(run.nr for run in self.owners.remove_if(lambda run: run.value == domid))

    def owned_by(self, domid: int) -> int:
        return sum(run.nr for run in self.owners if run.value == domid)

    # -- frame contents ----------------------------------------------------------------
    def locate(self, mfn: int) -> tuple[mmap.mmap, int]:
        """The mapped file and offset holding host frame `mfn` (EIO if no known file has it)."""
        for attempt in range(2):
            if self._stale or attempt:
                self._reindex()
            spa = mfn << PAGE_SHIFT
            for index in self._indexes:
                region = index.region
                if spa < region.spa_base:
                    continue
                hit = index.lookup(spa - region.spa_base)
                if hit is not None:
                    return _mapped(*hit), hit[1]
        raise XenError(errno.EIO, f"host frame {mfn:#x} is in no file the simulator was told about")

    def _reindex(self) -> None:
        for index in self._indexes:
            index.rebuild()
        self._stale = False
        self.generation += 1

    def close(self) -> None:
        for index in self._indexes:
            index.close()


def _mapped(f: _File, offset: int) -> mmap.mmap:
    if f.map is None:
        try:
            fd = os.open(f.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise XenError(errno.EIO, f"cannot open {f.path}: {e.strerror}") from None
        try:
            f.map = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    if offset + PAGE_SIZE > len(f.map):
        raise XenError(errno.EIO, f"{f.path} is shorter than offset {offset:#x}")
    return f.map


def populate_pmem_map(host: HostPmem, physmap: Physmap, domid: int, mfn: int, gfn: int, nr: int,
                      ioreq_overlap: Callable[[int, int], int | None]) -> None:
    """XENMEM_populate_pmem_map on an alive HVM domain: check everything, then map all or nothing.

    `ioreq_overlap(start, end_inclusive)` names the ioreq server claiming part of the range.
    """
    for name, value in (("mfn", mfn), ("gfn", gfn), ("nr_mfns", nr)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _einval(f"{name} must be a non-negative integer")
    if not 1 <= nr <= UINT_MAX:
        raise _einval(f"nr_mfns {nr} outside 1..{UINT_MAX}")
    host.check_frames(mfn, nr)
    physmap.check_free(gfn, nr)
    server = ioreq_overlap(gfn << PAGE_SHIFT, ((gfn + nr) << PAGE_SHIFT) - 1)
    if server is not None:
        raise XenError(
            errno.EEXIST, f"gfns [{gfn:#x}, {gfn + nr:#x}) overlap an MMIO range of ioreq server {server}"
        )
    host.claim(domid, mfn, nr)
    physmap.add_pmem(gfn, mfn, nr)


class PmemAccess:
    """The guest's view of its pmem-mapped GPAs, as an ioreq `Device` (MMIO only).

    Real pmem accesses never trap; the simulator performs them here, on the file bytes
    behind each frame. Accesses may cross page (and so file extent) boundaries.
    """

    def __init__(self, physmap: Physmap, host: HostPmem) -> None:
        self.physmap = physmap
        self.host = host
        self._cache: tuple[int, int, mmap.mmap, int] = (-1, -1, None, 0)  # type: ignore[assignment]

    def _page(self, gfn: int) -> tuple[mmap.mmap, int]:
        cached_gfn, generation, mapped, offset = self._cache
        if gfn == cached_gfn and generation == self.host.generation:
            return mapped, offset
        mfn = self.physmap.pmem_mfn(gfn)
        if mfn is None:
            raise XenError(errno.EFAULT, f"gfn {gfn:#x} is not pmem-mapped")
        mapped, offset = self.host.locate(mfn)
        self._cache = (gfn, self.host.generation, mapped, offset)
        return mapped, offset

    def read(self, gpa: int, n: int) -> bytes:
        out = b""
        while n:
            within = gpa & (PAGE_SIZE - 1)
            take = min(n, PAGE_SIZE - within)
            mapped, offset = self._page(gpa >> PAGE_SHIFT)
            out += mapped[offset + within : offset + within + take]
            gpa, n = gpa + take, n - take
        return out

    def write(self, gpa: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            within = gpa & (PAGE_SIZE - 1)
            take = min(len(view), PAGE_SIZE - within)
            mapped, offset = self._page(gpa >> PAGE_SHIFT)
            mapped[offset + within : offset + within + take] = view[:take]
            gpa, view = gpa + take, view[take:]

    def mmio_read(self, addr: int, size: int) -> int:
        return int.from_bytes(self.read(addr, size), "little")

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.write(addr, value.to_bytes(size, "little"))

    def port_read(self, port: int, size: int) -> int:  # never routed here: ports are not memory
        raise XenError(errno.EINVAL, "pmem has no ports")

    def port_write(self, port: int, size: int, value: int) -> None:
        raise XenError(errno.EINVAL, "pmem has no ports")
