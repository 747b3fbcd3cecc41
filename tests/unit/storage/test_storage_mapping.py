"""From a fragmented backing file to populate calls: coverage, frames, refusals, memory."""

from __future__ import annotations

import mmap
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmemd.config import NvdimmConfig
from pmemd.storage import (
    FileExtents,
    FrameRefused,
    HostPmem,
    LayoutMoved,
    Placement,
    map_nvdimm,
    populate_backing,
)
from pmemd.storage.fiemap import fiemap_extents
from pmemd.storage.testing import (
    CountingSink,
    RecordingSink,
    SyntheticExtents,
    fiemap_unsupported,
    make_fragmented,
    page_stamp,
)

P = 4096
PAGES = 2048  # 8 MiB, every page its own extent
LABEL_PAGES = 32  # 128 KiB label area at the end of the file
ADDRESS = 0x1_0000_0000  # guest address of file offset 0
BASE_GFN = ADDRESS // P
PMEM_PAGES = PAGES - LABEL_PAGES


def block_device_of(path: Path) -> tuple[Path, int, int] | None:
    """(device node, byte offset of the filesystem on it, size) of the disk under `path`."""
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not node.exists():
        return None
    node = node.resolve()
    offset = int((node / "start").read_text()) * 512 if (node / "partition").exists() else 0
    disk = node.parent if offset or (node / "partition").exists() else node
    device = Path("/dev") / disk.name
    if not device.exists():
        return None
    return device, offset, int((node / "size").read_text()) * 512


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("mapping")
    if reason := fiemap_unsupported(directory):
        pytest.skip(reason)
    path = directory / "frag.img"
    return path, make_fragmented(path, PAGES)


@pytest.fixture(scope="module")
def host(fragmented: tuple[Path, bytes]) -> HostPmem:
    """The filesystem's disk as if it were host pmem at SPA 0 (all of it data)."""
    found = block_device_of(fragmented[0])
    offset, size = (found[1], found[2]) if found else (0, 1 << 50)
    return HostPmem(str(found[0]) if found else "unknown", offset, offset, offset + size)


def config(path: Path) -> NvdimmConfig:
    return NvdimmConfig(path, PAGES * P, LABEL_PAGES * P, 0, 0, False, ADDRESS, None, 0)


def fiemap_count(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(1 for _ in fiemap_extents(fd))
    finally:
        os.close(fd)


def guest_pages(calls: list[tuple[int, int, int]]) -> list[int]:
    return [gfn + i for _mfn, gfn, nr in calls for i in range(nr)]


def test_the_fragmented_file_really_has_over_a_thousand_extents(fragmented: tuple[Path, bytes]) -> None:
    fd = os.open(fragmented[0], os.O_RDONLY)
    try:
        extents = list(fiemap_extents(fd))
    finally:
        os.close(fd)
    assert len(extents) >= 1000
    physical = [e.physical for e in extents]
    assert physical != sorted(physical), "extents should be physically out of logical order"


async def test_runs_cover_every_guest_page_exactly_once(fragmented: tuple[Path, bytes], host: HostPmem) -> None:
    sink = RecordingSink()
    report = await map_nvdimm(config(fragmented[0]), host, sink)
    assert sorted(guest_pages(sink.calls)) == list(range(BASE_GFN, BASE_GFN + PMEM_PAGES))
    assert (report.frames, report.calls) == (PMEM_PAGES, len(sink.calls))


async def test_label_pages_are_never_mapped(fragmented: tuple[Path, bytes], host: HostPmem) -> None:
    sink = RecordingSink()
    await map_nvdimm(config(fragmented[0]), host, sink)
    label_frames = set()
    fd = os.open(fragmented[0], os.O_RDONLY)
    try:
        for e in fiemap_extents(fd, PMEM_PAGES * P, LABEL_PAGES * P):
            label_frames.update(range((host.spa_base + e.physical) // P, (host.spa_base + e.physical + e.length) // P))
    finally:
        os.close(fd)
    mapped = {mfn + i for mfn, _gfn, nr in sink.calls for i in range(nr)}
    assert len(label_frames) == LABEL_PAGES
    assert not mapped & label_frames


async def test_each_guest_page_gets_the_frame_fiemap_reports(fragmented: tuple[Path, bytes], host: HostPmem) -> None:
    expected = {}
    fd = os.open(fragmented[0], os.O_RDONLY)
    try:
        for e in fiemap_extents(fd):
            for i in range(e.length // P):
                expected[BASE_GFN + e.logical // P + i] = (host.spa_base + e.physical) // P + i
    finally:
        os.close(fd)
    sink = RecordingSink()
    await map_nvdimm(config(fragmented[0]), host, sink)
    got = {gfn + i: mfn + i for mfn, gfn, nr in sink.calls for i in range(nr)}
    assert got == {gfn: mfn for gfn, mfn in expected.items() if gfn < BASE_GFN + PMEM_PAGES}


@pytest.fixture
def device(fragmented: tuple[Path, bytes]) -> Iterator[int]:
    """The disk under the test filesystem, opened O_DIRECT (past its page cache), or a skip."""
    found = block_device_of(fragmented[0])
    if found is None:
        pytest.skip("no block device under the test filesystem; frames checked against FIEMAP only")
    try:
        fd = os.open(found[0], os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        pytest.skip(f"cannot read {found[0]} ({e.strerror}); frames checked against FIEMAP only")
    yield fd
    os.close(fd)


async def test_mapped_frames_hold_the_file_bytes_on_the_block_device(
    fragmented: tuple[Path, bytes], host: HostPmem, device: int
) -> None:
    sink = RecordingSink()
    await map_nvdimm(config(fragmented[0]), host, sink)
    frame_of = {gfn + i: mfn + i for mfn, gfn, nr in sink.calls for i in range(nr)}
    buf = mmap.mmap(-1, P)  # page aligned, as O_DIRECT requires
    try:
        for page in [0, 1, 2, PMEM_PAGES - 1, *range(3, PMEM_PAGES, 97)]:
            os.preadv(device, [buf], frame_of[BASE_GFN + page] * P)  # spa_base is the disk offset
            assert bytes(buf) == page_stamp(fragmented[1], page), f"page {page}"
    finally:
        buf.close()


async def test_contiguous_neighbours_coalesce_into_one_run() -> None:
    source = SyntheticExtents(10, pages=2, stride=2)  # physically back to back
    host = HostPmem("pmem0", 0, 0, 1 << 40)
    sink = RecordingSink()
    await populate_backing(source, sink, host, Placement(ADDRESS, source.size, source.size))
    assert sink.calls == [(source.physical_base // P, BASE_GFN, 20)]


async def test_runs_are_chunked_to_the_maximum() -> None:
    source = SyntheticExtents(1, pages=10)
    host = HostPmem("pmem0", 0, 0, 1 << 40)
    sink = RecordingSink()
    await populate_backing(source, sink, host, Placement(ADDRESS, source.size, source.size), max_nr=4)
    mfn = source.physical_base // P
    assert sink.calls == [(mfn, BASE_GFN, 4), (mfn + 4, BASE_GFN + 4, 4), (mfn + 8, BASE_GFN + 8, 2)]


async def test_an_extent_straddling_the_label_area_is_clipped() -> None:
    source = SyntheticExtents(1, pages=40)
    host = HostPmem("pmem0", 0, 0, 1 << 40)
    sink = RecordingSink()
    await populate_backing(source, sink, host, Placement(ADDRESS, source.size, 8 * P))
    assert sink.calls == [(source.physical_base // P, BASE_GFN, 8)]


async def test_a_frame_in_the_reserved_area_is_refused_naming_offset_and_frame() -> None:
    source = SyntheticExtents(8, stride=3)  # extent i at frame base + 3i
    base = source.physical_base // P
    host = HostPmem("pmem0", 0, 0, 1 << 40, reserved_start=(base + 12) * P, reserved_end=(base + 13) * P)
    with pytest.raises(
        FrameRefused,
        match=rf"^synthetic at file offset 0x4000: host frame {base + 12:#x} is in the host's reserved/management area",
    ):
        await populate_backing(source, RecordingSink(), host, Placement(ADDRESS, source.size, source.size))


async def test_a_frame_outside_the_data_area_is_refused() -> None:
    source = SyntheticExtents(4, pages=4, stride=4)
    base = source.physical_base // P
    host = HostPmem("pmem0", 0, source.physical_base, source.physical_base + 10 * P)
    with pytest.raises(
        FrameRefused, match=rf"at file offset 0xa000: host frame {base + 10:#x} is outside the host's pmem data area"
    ):
        await populate_backing(source, RecordingSink(), host, Placement(ADDRESS, source.size, source.size))


async def test_a_refused_frame_anywhere_means_nothing_is_populated(
    fragmented: tuple[Path, bytes], host: HostPmem
) -> None:
    fd = os.open(fragmented[0], os.O_RDONLY)
    try:
        last = list(fiemap_extents(fd, (PMEM_PAGES - 1) * P, P))[0]
    finally:
        os.close(fd)
    frame = host.spa_base + last.physical
    reserved = HostPmem(host.device, host.spa_base, host.data_start, host.data_end, frame, frame + P)
    sink = RecordingSink()
    with pytest.raises(FrameRefused, match=f"at file offset {(PMEM_PAGES - 1) * P:#x}"):
        await map_nvdimm(config(fragmented[0]), reserved, sink)
    assert sink.calls == []


async def test_a_layout_other_than_the_recorded_one_is_refused_before_mapping(
    fragmented: tuple[Path, bytes], host: HostPmem
) -> None:
    sink = RecordingSink()
    with pytest.raises(LayoutMoved, match="extent layout changed since it was recorded"):
        await map_nvdimm(config(fragmented[0]), host, sink, expected_layout="0" * 40)
    assert sink.calls == []


async def test_the_file_source_and_the_report_agree_on_the_extent_count(fragmented: tuple[Path, bytes]) -> None:
    source = FileExtents(fragmented[0], PAGES * P, batch=7)
    host = HostPmem("any", 0, 0, 1 << 50)
    report = await populate_backing(source, CountingSink(), host, Placement(ADDRESS, PAGES * P, PAGES * P))
    assert (report.extents, report.frames) == (fiemap_count(fragmented[0]), PAGES)


async def peak_bytes(count: int) -> int:
    source = SyntheticExtents(count)
    host = HostPmem("pmem0", 0, 0, 1 << 46)
    tracemalloc.start()
    try:
        await populate_backing(source, CountingSink(), host, Placement(ADDRESS, source.size, source.size))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_pipeline_memory_does_not_grow_with_the_extent_count() -> None:
    small, large = await peak_bytes(5_000), await peak_bytes(50_000)
    assert large - small < 16 * 1024, (small, large)
