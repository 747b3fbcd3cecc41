"""End to end: a backing file mapped into a simulated guest by the daemon, checked through the
guest's own accesses against the file; every refusal on the way, and release on destroy.

The host pmem is simulated: the block device under the test directory sits at SPA
0x10_0000_0000 for both the daemon (`[host]`) and the simulator (its region), and the
simulator resolves frames to file bytes with its own FIEMAP.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from pmemd import config as configmod
from pmemd.daemon.guest import Guest
from pmemd.daemon.serve import serve_guest
from pmemd.ioreq.abi import IOREQ_READ, IOREQ_WRITE
from pmemd.sim import wire
from pmemd.sim.client.vcpu import GuestConnection
from pmemd.sim.hv_pmem import PmemRegion
from pmemd.storage import BackingRefused, FrameRefused, LayoutMoved, LockHeld, record_layout
from pmemd.storage.testing import fiemap_unsupported, make_fragmented, page_stamp
from pmemd.xen.errors import HypervisorError
from tests.harness.config import guest_config, write_toml
from tests.harness.daemon import run_cli
from tests.harness.guest_script import run_script_async

P = 4096
MiB = 1 << 20
SPA = 0x10_0000_0000
DATA = (SPA, SPA + (1 << 42))  # the whole disk, whatever its size
PMEM_PAGES = 2048  # 8 MiB of guest PMEM, every page its own extent
LABEL_PAGES = 32  # 128 KiB of labels after it
PAGES = PMEM_PAGES + LABEL_PAGES
BOUNCE = 0x100000  # a guest RAM page the rep accesses copy through


@pytest.fixture
def fs(tmp_path: Path) -> Path:
    if reason := fiemap_unsupported(tmp_path):
        pytest.skip(reason)
    return tmp_path


def write_config(directory: Path, sim_path: Path, *, domid: int = 1, reserved: tuple[int, int] | None = None,
                 size: int = PAGES * P, host: bool = True) -> Path:
    """A guest with one NVDIMM on `nv.img`, its config file in `directory`."""
    sections = {}
    if host:
        sections["host"] = {"spa_base": SPA, "data": list(DATA), **({"reserved": list(reserved)} if reserved else {})}
    dimm = {"backing": "nv.img", "size": size, "label_size": "128K"}  # the test creates nv.img, beside the config
    raw = guest_config(domid, sim_path, lowmem="16M", qmp=f"{directory}/qmp-{domid}", nvdimms=[dimm], **sections)
    return write_toml(directory / f"guest-{domid}.toml", raw)


def host_region(sim, backing: Path) -> None:
    sim.hv.pmem.add_region(PmemRegion("test disk", SPA, *DATA, files=(backing,)))


@contextlib.asynccontextmanager
async def daemon(config: configmod.Config, sim) -> AsyncIterator[Guest]:
    """The daemon for `config`, serving until the block ends."""
    async with trio.open_nursery() as nursery:
        guest = await nursery.start(serve_guest, config, str(sim.path))
        yield guest
        nursery.cancel_scope.cancel()


async def refusal(config: configmod.Config, sim) -> BaseException:
    """The error that stops the daemon during setup (unwrapped from exception groups)."""
    try:
        async with daemon(config, sim):
            pass
    except Exception as e:
        while isinstance(e, BaseExceptionGroup):
            e = e.exceptions[0]
        return e
    pytest.fail("the daemon started")


async def guest_pages(sim, domid: int, gpa: int, pages: int) -> list[bytes]:
    """Read `pages` pages at `gpa` as the guest's CPU does: one rep MOVSQ per page into RAM."""

    def run() -> list[bytes]:
        with GuestConnection(sim.path, domid) as g:
            out = []
            for i in range(pages):
                g.access(wire.SPACE_MMIO, gpa + i * P, 8, IOREQ_READ, BOUNCE, count=P // 8, data_is_ptr=True)
                out.append(g.read_memory(BOUNCE, P))
            return out

    return await trio.to_thread.run_sync(run)


async def guest_write_pages(sim, domid: int, gpa: int, pages: list[bytes]) -> None:
    def run() -> None:
        with GuestConnection(sim.path, domid) as g:
            for i, data in enumerate(pages):
                g.write_memory(BOUNCE, data)
                g.access(wire.SPACE_MMIO, gpa + i * P, 8, IOREQ_WRITE, BOUNCE, count=P // 8, data_is_ptr=True)

    await trio.to_thread.run_sync(run)


@pytest.fixture
async def mapped(fs: Path, sim) -> AsyncIterator[tuple[configmod.Config, Path, bytes, Guest]]:
    """A fragmented file mapped into running domain 1 by its daemon."""
    backing = fs / "nv.img"
    salt = make_fragmented(backing, PAGES)
    host_region(sim, backing)
    config = configmod.load(write_config(fs, sim.path))
    await sim.create_domain(1, lowmem=16 * MiB)
    async with daemon(config, sim) as guest:
        yield config, backing, salt, guest


async def test_every_guest_page_reads_the_files_bytes_at_its_offset(mapped, sim) -> None:
    config, backing, salt, guest = mapped
    (nvdimm,) = config.nvdimms
    assert "map-pmem" in guest.completed
    assert guest.pmem_maps[0].extents >= 1000 and guest.pmem_maps[0].frames == PMEM_PAGES
    pages = await guest_pages(sim, 1, nvdimm.address, PMEM_PAGES)
    mismatched = [i for i, page in enumerate(pages) if page != page_stamp(salt, i)]
    assert mismatched == []


async def test_bytes_the_guest_writes_land_in_the_file_at_the_matching_offset(mapped, sim) -> None:
    config, backing, _, _ = mapped
    (nvdimm,) = config.nvdimms
    written = [page_stamp(b"guest-wr", i) for i in range(PMEM_PAGES)]
    await guest_write_pages(sim, 1, nvdimm.address, written)
    data = backing.read_bytes()
    mismatched = [i for i in range(PMEM_PAGES) if data[i * P : (i + 1) * P] != written[i]]
    assert mismatched == []


async def test_pmemd_guest_reads_and_writes_nvdimm_addresses_in_the_backing_file(mapped, sim) -> None:
    config, backing, salt, _ = mapped
    (nvdimm,) = config.nvdimms
    script = [{"read": nvdimm.address + 1234 * P + 8, "length": 40},
              {"write": nvdimm.address + 77 * P + 4, "data": "c0ffee00deadbeef11"}]
    run = await run_script_async(config.source, script)
    assert run.returncode == 0, run.stderr
    read, wrote = run.results
    assert bytes.fromhex(read["data"]) == page_stamp(salt, 1234)[8:48]
    assert wrote == {"ok": True}
    with backing.open("rb") as f:
        f.seek(77 * P + 4)
        assert f.read(9) == bytes.fromhex("c0ffee00deadbeef11")


async def test_label_pages_are_never_mapped(mapped, sim) -> None:
    config, backing, salt, _ = mapped
    (nvdimm,) = config.nvdimms
    physmap = sim.hv.domains[1].physmap
    assert sum(nr for _, _, nr in physmap.pmem_runs()) == PMEM_PAGES
    assert physmap.pmem_mfn(nvdimm.end // P) is None

    def read_past_the_end() -> int:
        with GuestConnection(sim.path, 1) as g:
            return g.mmio_read(nvdimm.end, 8)

    assert await trio.to_thread.run_sync(read_past_the_end) == (1 << 64) - 1  # unclaimed, not the labels


async def test_destroy_releases_every_frame_and_another_domain_can_map_them(fs: Path, sim) -> None:
    backing = fs / "nv.img"
    salt = make_fragmented(backing, PAGES)
    host_region(sim, backing)
    await sim.create_domain(1, lowmem=16 * MiB)
    async with daemon(configmod.load(write_config(fs, sim.path, domid=1)), sim):
        assert sim.hv.pmem.owned_by(1) == PMEM_PAGES
    sim.hv.destroy_domain(sim.hv.domains[1])
    assert sim.hv.domains[1].physmap.pmem_runs() == [] and sim.hv.pmem.owned_by(1) == 0
    assert len(sim.hv.pmem.owners) == 0
    await sim.create_domain(2, lowmem=16 * MiB)
    config = configmod.load(write_config(fs, sim.path, domid=2))
    async with daemon(config, sim):
        assert sim.hv.pmem.owned_by(2) == PMEM_PAGES
        assert (await guest_pages(sim, 2, config.nvdimms[0].address + 100 * P, 1)) == [page_stamp(salt, 100)]


async def test_frames_a_live_domain_still_owns_are_refused_to_another(fs: Path, sim) -> None:
    backing = fs / "nv.img"
    make_fragmented(backing, PAGES)
    host_region(sim, backing)
    await sim.create_domain(1, lowmem=16 * MiB)
    async with daemon(configmod.load(write_config(fs, sim.path, domid=1)), sim):
        pass  # the daemon stops (its lock goes), the domain keeps its frames: Xen has no unmap
    await sim.create_domain(2, lowmem=16 * MiB)
    error = await refusal(configmod.load(write_config(fs, sim.path, domid=2)), sim)
    assert isinstance(error, HypervisorError) and error.errno == errno.EBUSY
    assert "already belongs to domain 1" in str(error)


async def test_a_second_daemon_on_the_same_file_is_refused_naming_the_holder(mapped, sim, fs: Path) -> None:
    await sim.create_domain(2, lowmem=16 * MiB)
    error = await refusal(configmod.load(write_config(fs, sim.path, domid=2)), sim)
    assert isinstance(error, LockHeld)
    assert f"is already in use by pid {os.getpid()}, domain 1 (pmemd)" in str(error)
    assert sim.hv.domains[2].physmap.pmem_runs() == []


async def test_a_sparse_file_is_refused_then_accepted_after_pmemd_prepare(fs: Path, sim) -> None:
    backing = fs / "nv.img"
    with backing.open("wb") as f:
        f.truncate(PAGES * P)
    host_region(sim, backing)
    await sim.create_domain(1, lowmem=16 * MiB)
    path = write_config(fs, sim.path)
    error = await refusal(configmod.load(path), sim)
    assert isinstance(error, BackingRefused)
    assert f"{backing} at file offset 0x0: hole of {PAGES * P:#x} bytes" in str(error)
    assert "run `pmemd prepare`" in str(error)
    proc = await run_cli("prepare", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["nvdimm"], report["size"], report["zeroed"], report["recorded"]) == (0, PAGES * P, PAGES * P, True)
    async with daemon(configmod.load(path), sim) as guest:
        assert guest.pmem_maps[0].fingerprint == report["fingerprint"]
        assert await guest_pages(sim, 1, guest.config.nvdimms[0].address + 5 * P, 1) == [bytes(P)]


async def test_a_file_whose_layout_moved_since_it_was_recorded_is_refused(fs: Path, sim) -> None:
    backing = fs / "nv.img"
    make_fragmented(backing, PAGES)
    record_layout(backing, "0" * 40)
    host_region(sim, backing)
    await sim.create_domain(1, lowmem=16 * MiB)
    error = await refusal(configmod.load(write_config(fs, sim.path)), sim)
    assert isinstance(error, LayoutMoved) and "extent layout changed since it was recorded" in str(error)
    assert sim.hv.domains[1].physmap.pmem_runs() == []


async def test_a_backing_file_of_the_wrong_size_is_refused(fs: Path, sim) -> None:
    make_fragmented(fs / "nv.img", PAGES)
    await sim.create_domain(1, lowmem=16 * MiB)
    error = await refusal(configmod.load(write_config(fs, sim.path, size=PAGES * P - 2 * MiB)), sim)
    assert isinstance(error, BackingRefused)
    assert f"size is {PAGES * P:#x} bytes but the configuration says {PAGES * P - 2 * MiB:#x}" in str(error)


async def test_frames_in_the_reserved_area_are_refused_and_nothing_is_mapped(fs: Path, sim) -> None:
    backing = fs / "nv.img"
    make_fragmented(backing, PAGES)
    host_region(sim, backing)
    await sim.create_domain(1, lowmem=16 * MiB)
    error = await refusal(configmod.load(write_config(fs, sim.path, reserved=DATA)), sim)
    assert isinstance(error, FrameRefused) and "is in the host's reserved/management area" in str(error)
    assert sim.hv.domains[1].physmap.pmem_runs() == []


async def test_frames_the_simulated_host_does_not_offer_are_refused_enxio(fs: Path, sim) -> None:
    backing = fs / "nv.img"
    make_fragmented(backing, PAGES)
    sim.hv.pmem.add_region(PmemRegion("elsewhere", SPA, SPA, SPA + 16 * P))  # too small for the file
    await sim.create_domain(1, lowmem=16 * MiB)
    error = await refusal(configmod.load(write_config(fs, sim.path)), sim)
    assert isinstance(error, HypervisorError) and error.errno == errno.ENXIO


async def test_without_a_host_section_nothing_is_mapped(fs: Path, sim) -> None:
    make_fragmented(fs / "nv.img", PAGES)
    await sim.create_domain(1, lowmem=16 * MiB)
    async with daemon(configmod.load(write_config(fs, sim.path, host=False)), sim) as guest:
        assert guest.pmem_maps == {} and sim.hv.domains[1].physmap.pmem_runs() == []


async def test_pmemd_prepare_fails_naming_the_nvdimm_when_a_file_is_too_large(fs: Path, sim) -> None:
    (fs / "nv.img").write_bytes(bytes(PAGES * P + P))
    proc = await run_cli("prepare", "--config", str(write_config(fs, sim.path)))
    assert proc.returncode == 1
    assert "nvdimm[0]:" in proc.stderr.decode() and "refusing to truncate" in proc.stderr.decode()
