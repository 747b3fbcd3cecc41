"""The daemon's storage steps: lock every backing file, then map each NVDIMM's PMEM.

"backing-lock" comes before the label stores open, so a second daemon on the same file is
refused before it replays a label journal or touches anything; it holds the locks for the
daemon's life. "map-pmem" re-verifies each file's layout against the fingerprint `pmemd
prepare` recorded and streams its frames to XENMEM_populate_pmem_map (`map_nvdimm`:
checked in full before the first populate). Nothing here writes guest data. There is no
undo: Xen has no unmap, the frames go back when the domain is destroyed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import structlog

from pmemd.config import Config, HostConfig, NvdimmConfig
from pmemd.storage import (
    BackingLock,
    BackingRefused,
    HostPmem,
    HostPmemError,
    MapReport,
    discover,
    map_nvdimm,
    recorded_layout,
)
from pmemd.xen.api import DeviceModelHypervisor

log = structlog.get_logger("pmemd.pmem")

SECTOR_SIZE = 512


class HypervisorSink:
    """A `PopulateSink` over the device model's hypervisor handle."""

    def __init__(self, hv: DeviceModelHypervisor) -> None:
        self.hv = hv

    async def populate(self, mfn: int, gfn: int, nr: int) -> None:
        await self.hv.populate_pmem_map(mfn, gfn, nr)


def host_pmem(host: HostConfig, nvdimm: NvdimmConfig) -> HostPmem:
    """The host pmem under `nvdimm`'s backing file, from `[host]` (or sysfs when it says discover)."""
    if host.spa_base is None:
        return discover(nvdimm.backing, reserved=host.reserved)
    data = host.data or (host.spa_base, host.spa_base + _device_size(nvdimm.backing))
    return HostPmem(f"device of {nvdimm.backing}", host.spa_base, *data, *host.reserved)


def _device_size(path: Path) -> int:
    """Bytes of the block device under `path` (sysfs), the default extent of the data area."""
    try:
        dev = os.stat(path).st_dev
        return int(Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/size").read_text()) * SECTOR_SIZE
    except (OSError, ValueError) as e:
        raise HostPmemError(
            f"{path}: cannot size its block device ({e}); give host.data = [start, end] in the config"
        ) from None


@contextlib.contextmanager
def lock_backings(config: Config) -> Iterator[None]:
    """An exclusive `BackingLock` on every backing file, held while the block runs.

    Without a `[host]` section nothing is mapped, so a backing file that does not exist
    yet is only warned about; with one, it is refused.
    """
    with contextlib.ExitStack() as stack:
        for index, nvdimm in enumerate(config.nvdimms):
            if config.pmem.mode == "none" and not nvdimm.backing.exists():
                log.warning("backing file missing: not locked", nvdimm=index, backing=str(nvdimm.backing))
                continue
            try:
                stack.enter_context(BackingLock(nvdimm.backing, domid=config.domid))
            except OSError as e:
                raise BackingRefused(nvdimm.backing, None, f"cannot open to lock: {e.strerror}") from None
        yield


async def map_all(config: Config, hv: DeviceModelHypervisor | None) -> dict[int, MapReport]:
    """Populate every NVDIMM's guest PMEM range [address, address + pmem_size) from its file
    (a map-failed one excepted); returns slot -> what was populated (empty without `[host]`)."""
    reports: dict[int, MapReport] = {}
    if config.pmem.mode != "direct" or config.host is None:
        if config.nvdimms:
            log.warning("no [host] section: guest PMEM is not mapped", nvdimms=len(config.nvdimms))
        return reports
    if hv is None:
        raise HostPmemError("[host] is set but there is no hypervisor to map guest PMEM with")
    sink = HypervisorSink(hv)
    for index, nvdimm in enumerate(config.nvdimms):
        if nvdimm.map_failed:  # configured "map-failed": the NFIT gives it no SPA range either
            log.info("pmem not mapped: the DIMM is configured map-failed", nvdimm=index)
            continue
        host = host_pmem(config.host, nvdimm)
        expected = recorded_layout(nvdimm.backing)
        if expected is None:
            log.warning("no recorded layout (run `pmemd prepare`): mapping without re-verification",
                        nvdimm=index, backing=str(nvdimm.backing))
        report = await map_nvdimm(nvdimm, host, sink, expected_layout=expected)
        reports[nvdimm.slot] = report
        log.info("pmem mapped", nvdimm=index, backing=str(nvdimm.backing), gpa=hex(nvdimm.address),
                 bytes=nvdimm.pmem_size, extents=report.extents, calls=report.calls, frames=report.frames,
                 verified=expected is not None)
    return reports
