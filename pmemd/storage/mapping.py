"""From extents to populate calls: the guest PMEM of a backing file, frame run by frame run.

    source.extents() ─▶ validated ─▶ Fingerprint.over ─▶ frame_runs ─▶ populate_runs ─▶ sink
       (FIEMAP batch)   (flags, holes,   (running hash)    (clip, mfn/gfn,   (chunks of at
                         alignment)                          refuse frames,   most max_nr)
                                                             coalesce)

Every stage is a generator holding one extent or one run, so memory is constant in the
number of extents. Only [0, size - label_size) of the file is mapped; the label area is
validated with the rest but never reaches the sink.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import trio

from pmemd.xen.page import PAGE_SHIFT

from ..config import NvdimmConfig
from .errors import FrameRefused
from .extents import ExtentSource, FileExtents, validated
from .fiemap import Extent
from .host import HostPmem
from .layout import Fingerprint, layout_moved

# Frames per populate call. Xen's call is preemptible and libxl splits at UINT_MAX pages;
# we bound a call at 1 GiB of frames so one request never monopolises the simulator.
DEFAULT_MAX_NR = 1 << 18
# Runs between checkpoints when the sink never blocks (keeps the trio loop responsive).
_CHECKPOINT_EVERY = 4096


class PopulateSink(Protocol):
    """Whatever maps host frames into the guest physmap (Xen's populate_pmem_map)."""

    async def populate(self, mfn: int, gfn: int, nr: int) -> None: ...


class Run(NamedTuple):
    """`nr` host frames from `mfn` backing `nr` guest frames from `gfn`."""

    mfn: int
    gfn: int
    nr: int


@dataclass(frozen=True)
class Placement:
    """Where a backing file goes: file offset 0 at guest address `address`."""

    address: int
    size: int  # the whole file, validated
    pmem_size: int  # the guest-mapped prefix; the label area follows it

    @classmethod
    def of(cls, nvdimm: NvdimmConfig) -> Placement:
        return cls(nvdimm.address, nvdimm.size, nvdimm.pmem_size)


@dataclass(frozen=True)
class MapReport:
    """What a mapping did: counts are of validated extents, populate calls and frames."""

    extents: int
    calls: int
    frames: int
    fingerprint: str


def frame_runs(extents: Iterable[Extent], host: HostPmem, placement: Placement, name: str) -> Iterator[Run]:
    """Turn validated extents into coalesced runs of frames, refusing unmappable frames.

    Extents are clipped at `placement.pmem_size`; those past it (the label area) are
    consumed but not mapped. Neighbouring extents that are contiguous both in the file
    and on the device merge into one run.
    """
    limit = placement.pmem_size
    base_gfn = placement.address >> PAGE_SHIFT
    spa = host.spa_base
    data, reserved = host.data_frames, host.reserved_frames
    data_lo, data_hi = data.start, data.stop
    res_lo, res_hi = (reserved.start, reserved.stop) if reserved else (0, 0)
    run_mfn = run_gfn = run_nr = 0
    for logical, physical, length, _flags in extents:
        if logical >= limit:
            continue
        if logical + length > limit:
            length = limit - logical
        mfn = (spa + physical) >> PAGE_SHIFT
        nr = length >> PAGE_SHIFT
        end = mfn + nr
        if mfn < data_lo or end > data_hi or (mfn < res_hi and res_lo < end):
            _refuse(host, name, logical, mfn, nr)
        gfn = base_gfn + (logical >> PAGE_SHIFT)
        if run_nr and mfn == run_mfn + run_nr and gfn == run_gfn + run_nr:
            run_nr += nr
            continue
        if run_nr:
            yield Run(run_mfn, run_gfn, run_nr)
        run_mfn, run_gfn, run_nr = mfn, gfn, nr
    if run_nr:
        yield Run(run_mfn, run_gfn, run_nr)


def _refuse(host: HostPmem, name: str, logical: int, mfn: int, nr: int) -> None:
    refusal = host.first_refused(mfn, nr)
    assert refusal is not None, "fast bound check and HostPmem.first_refused disagree"
    bad, reason = refusal
    raise FrameRefused(name, logical + ((bad - mfn) << PAGE_SHIFT), bad, reason)


async def populate_runs(runs: Iterable[Run], sink: PopulateSink, *, max_nr: int = DEFAULT_MAX_NR) -> tuple[int, int]:
    """Send runs to the sink in chunks of at most `max_nr` frames; return (calls, frames)."""
    if max_nr < 1:
        raise ValueError(f"max_nr must be positive, got {max_nr}")
    populate = sink.populate
    calls = frames = 0
    for mfn, gfn, nr in runs:
        frames += nr
        while nr > max_nr:
            await populate(mfn, gfn, max_nr)
            mfn, gfn, nr, calls = mfn + max_nr, gfn + max_nr, nr - max_nr, calls + 1
        await populate(mfn, gfn, nr)
        calls += 1
        if calls % _CHECKPOINT_EVERY == 0:
            await trio.lowlevel.checkpoint()
    return calls, frames


async def populate_backing(
    source: ExtentSource,
    sink: PopulateSink,
    host: HostPmem,
    placement: Placement,
    *,
    max_nr: int = DEFAULT_MAX_NR,
) -> MapReport:
    """Stream `source` through the whole pipeline into `sink`.

    A refusal can come after some runs were populated (the stream is checked as it flows);
    Xen has no unmap, so callers that must not half-map check the stream first without
    populating anything (`map_nvdimm` does).
    """
    fingerprint = Fingerprint(placement.size)
    stream = fingerprint.over(validated(source.extents(), source.name, placement.size))
    calls, frames = await populate_runs(frame_runs(stream, host, placement, source.name), sink, max_nr=max_nr)
    return MapReport(fingerprint.extents, calls, frames, fingerprint.hexdigest())


async def map_nvdimm(
    nvdimm: NvdimmConfig,
    host: HostPmem,
    sink: PopulateSink,
    *,
    expected_layout: str | None = None,
    max_nr: int = DEFAULT_MAX_NR,
) -> MapReport:
    """Map one vNVDIMM's guest PMEM: check first (nothing populated on refusal), then map.

    The pre-check validates every extent and every frame; with `expected_layout` it also
    refuses a file whose layout moved. The mapping pass must then yield the same
    fingerprint, or the layout moved while we mapped (LayoutMoved).
    """
    source = FileExtents(nvdimm.backing, nvdimm.size)
    placement = Placement.of(nvdimm)
    fingerprint = Fingerprint(placement.size)
    stream = fingerprint.over(validated(source.extents(), source.name, placement.size))
    for _ in frame_runs(stream, host, placement, source.name):
        pass
    before = fingerprint.hexdigest()
    if expected_layout is not None and before != expected_layout:
        raise layout_moved(source.name, expected_layout, before)
    report = await populate_backing(source, sink, host, placement, max_nr=max_nr)
    if report.fingerprint != before:
        raise layout_moved(source.name, before, report.fingerprint)
    return report
