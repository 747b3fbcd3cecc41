"""The simulated hypervisor's physmap and host pmem: XENMEM_populate_pmem_map's rules and the
bytes a guest sees at a pmem-mapped address."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pmemd.sim import ioreq
from pmemd.sim.errors import XenError
from pmemd.sim.hv_domain import Layout
from pmemd.sim.hv_physmap import IntervalMap, MapType
from pmemd.sim.hv_pmem import PmemRegion, load_host_pmem
from pmemd.sim.hypervisor import Hypervisor
from pmemd.sim.ioreq import Request
from pmemd.storage import FileExtents
from pmemd.storage.testing import fiemap_unsupported, page_stamp

P = 4096
MiB = 1 << 20
SPA = 0x10_0000_0000  # the simulated host pmem's SPA base
DATA_END = SPA + (1 << 40)
PMEM_GFN = (8 << 30) // P  # guest pmem at 8 GiB, clear of RAM and the hole


def hypervisor(*, reserved: tuple[int, int] = (0, 0), files: tuple[Path, ...] = ()) -> Hypervisor:
    hv = Hypervisor()
    hv.pmem.add_region(PmemRegion("simulated", SPA, SPA, DATA_END, *reserved, files=files))
    return hv


def domain(hv: Hypervisor, domid: int = 1):
    dom = hv.create_domain(domid, Layout(16 * MiB, MiB, 256 * MiB, 1))
    dom.unpause()
    return dom


def refused(code: int, words: str, call, *args) -> None:
    with pytest.raises(XenError) as info:
        call(*args)
    assert info.value.errno == code, info.value
    assert words in str(info.value)


MFN = SPA // P + 100


def test_interval_map_finds_the_run_holding_a_point_and_the_first_overlap() -> None:
    runs: IntervalMap[str] = IntervalMap()
    runs.add(10, 5, "a")
    runs.add(20, 1, "b")
    assert runs.find(14).value == "a" and runs.find(15) is None and runs.find(20).value == "b"
    assert runs.first_overlap(0, 10) is None
    assert runs.first_overlap(15, 10).value == "b"
    assert runs.first_overlap(0, 100).value == "a"


async def test_populate_maps_the_gfn_run_onto_the_frames() -> None:
    hv = hypervisor()
    dom = domain(hv)
    hv.populate_pmem_map(dom, MFN, PMEM_GFN, 16)
    assert dom.physmap.pmem_runs() == [(PMEM_GFN, MFN, 16)]
    assert dom.physmap.pmem_mfn(PMEM_GFN + 15) == MFN + 15
    assert dom.physmap.pmem_mfn(PMEM_GFN + 16) is None
    assert hv.pmem.owned_by(1) == 16


@pytest.mark.parametrize(
    ("gfn", "words"),
    [(0x100, "overlap guest RAM"), ((1 << 32) // P + 10, "overlap guest RAM"),
     ((1 << 32) // P - 1, "overlap the MMIO hole")],
)
async def test_a_run_over_ram_or_the_mmio_hole_is_refused(gfn: int, words: str) -> None:
    hv = hypervisor()
    dom = domain(hv)
    refused(errno.EEXIST, words, hv.populate_pmem_map, dom, MFN, gfn, 4)


async def test_a_run_over_another_pmem_mapping_is_refused() -> None:
    hv = hypervisor()
    dom = domain(hv)
    hv.populate_pmem_map(dom, MFN, PMEM_GFN, 16)
    refused(errno.EEXIST, "overlap a pmem mapping", hv.populate_pmem_map, dom, MFN + 100, PMEM_GFN + 15, 4)


async def test_a_run_over_an_ioreq_servers_mmio_range_is_refused_naming_it() -> None:
    hv = hypervisor()
    dom = domain(hv)
    server = dom.create_server(1, ioreq.HVM_IOREQSRV_BUFIOREQ_OFF)
    dom.map_range(server, 1, PMEM_GFN * P + 0x2000, PMEM_GFN * P + 0x2FFF)
    refused(errno.EEXIST, f"ioreq server {server.id}", hv.populate_pmem_map, dom, MFN, PMEM_GFN, 4)


async def test_frames_outside_the_data_area_are_refused_enxio() -> None:
    hv = hypervisor()
    dom = domain(hv)
    refused(errno.ENXIO, "not inside one host pmem data area", hv.populate_pmem_map, dom, SPA // P - 1, PMEM_GFN, 2)
    refused(errno.ENXIO, "not inside", hv.populate_pmem_map, dom, DATA_END // P - 1, PMEM_GFN, 2)


async def test_frames_in_the_reserved_area_are_refused_enxio_naming_the_first() -> None:
    hv = hypervisor(reserved=(SPA + 64 * P, SPA + 128 * P))
    dom = domain(hv)
    refused(errno.ENXIO, f"host frame {SPA // P + 64:#x} is in the reserved/management area",
            hv.populate_pmem_map, dom, SPA // P + 60, PMEM_GFN, 8)
    assert dom.physmap.pmem_runs() == []


async def test_a_frame_belongs_to_one_domain_only() -> None:
    hv = hypervisor()
    one, two = domain(hv, 1), domain(hv, 2)
    hv.populate_pmem_map(one, MFN, PMEM_GFN, 16)
    refused(errno.EBUSY, f"host frame {MFN:#x} already belongs to domain 1",
            hv.populate_pmem_map, two, MFN - 8, PMEM_GFN, 24)
    assert two.physmap.pmem_runs() == [] and hv.pmem.owned_by(2) == 0


async def test_the_same_frame_twice_in_one_domain_is_refused_too() -> None:
    hv = hypervisor()
    dom = domain(hv)
    hv.populate_pmem_map(dom, MFN, PMEM_GFN, 1)
    refused(errno.EBUSY, "already belongs to domain 1", hv.populate_pmem_map, dom, MFN, PMEM_GFN + 1, 1)


@pytest.mark.parametrize(("mfn", "gfn", "nr", "words"), [(MFN, PMEM_GFN, 0, "nr_mfns 0"),
                                                          (MFN, PMEM_GFN, 1 << 32, "nr_mfns"),
                                                          (-1, PMEM_GFN, 1, "mfn must be")])
async def test_malformed_arguments_are_refused_einval(mfn: int, gfn: int, nr: int, words: str) -> None:
    hv = hypervisor()
    refused(errno.EINVAL, words, hv.populate_pmem_map, domain(hv), mfn, gfn, nr)


async def test_a_dead_domain_gets_no_pmem() -> None:
    hv = hypervisor()
    dom = domain(hv)
    dom.crash("test")
    refused(errno.ESRCH, "crashed", hv.populate_pmem_map, dom, MFN, PMEM_GFN, 1)


async def test_destroy_releases_every_frame_for_another_domain() -> None:
    hv = hypervisor()
    dom = domain(hv)
    for i in range(8):
        hv.populate_pmem_map(dom, MFN + 2 * i, PMEM_GFN + i, 1)
    hv.destroy_domain(dom)
    assert dom.physmap.pmem_runs() == [] and hv.pmem.owned_by(1) == 0 and len(hv.pmem.owners) == 0
    assert [r.value.type for r in dom.physmap.runs] == [MapType.RAM, MapType.MMIO, MapType.RAM]
    other = domain(hv, 2)
    hv.populate_pmem_map(other, MFN, PMEM_GFN, 16)
    assert hv.pmem.owned_by(2) == 16


# -- contents: the simulator's own FIEMAP of the files it was told about --------------------


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    if reason := fiemap_unsupported(tmp_path):
        pytest.skip(reason)
    path = tmp_path / "nv.img"
    path.write_bytes(b"".join(page_stamp(b"physmap!", i) for i in range(16)))
    os.sync()
    return path


def frames_of(path: Path) -> list[int]:
    """Each page's host frame, as the daemon's extent reader derives it."""
    frames = []
    for _logical, physical, length, _ in FileExtents(path, path.stat().st_size).extents():
        frames += [(SPA + physical) // P + i for i in range(length // P)]
    return frames


async def access(dom, addr: int, size: int, dir: int, data: int = 0, **kw) -> int:
    req = Request(ioreq.IOREQ_TYPE_COPY, addr, data, kw.get("count", 1), size, dir, False, kw.get("ptr", False))
    value, trapped = await dom.access(0, req)
    assert not trapped
    return value


async def test_a_guest_read_of_a_pmem_gpa_returns_the_files_bytes(backing: Path) -> None:
    hv = hypervisor(files=(backing,))
    dom = domain(hv)
    for page, mfn in enumerate(frames_of(backing)):
        hv.populate_pmem_map(dom, mfn, PMEM_GFN + page, 1)
    gpa = (PMEM_GFN + 5) * P + 16
    assert await access(dom, gpa, 8, ioreq.IOREQ_READ) == int.from_bytes(page_stamp(b"physmap!", 5)[16:24], "little")


async def test_a_rep_read_copies_a_whole_page_into_guest_ram(backing: Path) -> None:
    hv = hypervisor(files=(backing,))
    dom = domain(hv)
    for page, mfn in enumerate(frames_of(backing)):
        hv.populate_pmem_map(dom, mfn, PMEM_GFN + page, 1)
    await access(dom, (PMEM_GFN + 9) * P, 8, ioreq.IOREQ_READ, 0x10000, count=P // 8, ptr=True)
    assert dom.ram.read(0x10000, P) == page_stamp(b"physmap!", 9)


async def test_a_guest_write_to_a_pmem_gpa_lands_in_the_file(backing: Path) -> None:
    hv = hypervisor(files=(backing,))
    dom = domain(hv)
    for page, mfn in enumerate(frames_of(backing)):
        hv.populate_pmem_map(dom, mfn, PMEM_GFN + page, 1)
    await access(dom, (PMEM_GFN + 3) * P + P - 4, 8, ioreq.IOREQ_WRITE, 0x1122334455667788)  # crosses a page
    data = backing.read_bytes()
    assert data[4 * P - 4 : 4 * P + 4] == (0x1122334455667788).to_bytes(8, "little")


async def test_a_frame_in_no_known_file_fails_the_access_eio(backing: Path) -> None:
    hv = hypervisor(files=())
    dom = domain(hv)
    hv.populate_pmem_map(dom, frames_of(backing)[0], PMEM_GFN, 1)
    with pytest.raises(XenError) as info:
        await access(dom, PMEM_GFN * P, 8, ioreq.IOREQ_READ)
    assert info.value.errno == errno.EIO and "in no file the simulator was told about" in str(info.value)


def test_a_host_pmem_file_describes_regions(tmp_path: Path) -> None:
    path = tmp_path / "host.toml"
    path.write_text(f'[[region]]\ndevice = "sim0"\nspa_base = {SPA}\ndata = [{SPA}, {SPA + MiB}]\n'
                    f'reserved = ["{SPA:#x}", "{SPA + P:#x}"]\nfiles = ["nv.img"]\n')
    (region,) = load_host_pmem(path)
    assert region == PmemRegion("sim0", SPA, SPA, SPA + MiB, SPA, SPA + P, files=(tmp_path / "nv.img",))
