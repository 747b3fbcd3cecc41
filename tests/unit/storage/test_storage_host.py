"""The host pmem description: which frames a guest may have, and where it comes from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmemd.storage import HostPmem, HostPmemError, discover, parse_pfn_info
from pmemd.storage.pfn import build_pfn_info

MiB = 1 << 20
GiB = 1 << 30
P = 4096


def test_frames_in_the_data_area_outside_the_reserved_area_are_mappable() -> None:
    host = HostPmem("pmem0", GiB, GiB, 2 * GiB, GiB, GiB + 16 * MiB)
    assert host.first_refused((GiB + 16 * MiB) // P, 100) is None


def test_a_run_reaching_into_the_reserved_area_is_refused_at_its_first_reserved_frame() -> None:
    host = HostPmem("pmem0", 0, 0, GiB, 16 * MiB, 32 * MiB)
    frame, reason = host.first_refused(16 * MiB // P - 2, 4) or (0, "")
    assert frame == 16 * MiB // P
    assert reason == "is in the host's reserved/management area [0x1000, 0x2000)"


def test_a_run_leaving_the_data_area_is_refused_at_the_first_frame_past_it() -> None:
    host = HostPmem("pmem0", 0, 0, MiB)
    assert host.first_refused(MiB // P - 1, 2) == (MiB // P, "is outside the host's pmem data area [0x0, 0x100)")


def test_an_unaligned_description_is_refused() -> None:
    with pytest.raises(HostPmemError, match="data_end 0x100001 must be a non-negative multiple of 4 KiB"):
        HostPmem("pmem0", 0, 0, MiB + 1)


def test_an_empty_data_area_is_refused() -> None:
    with pytest.raises(HostPmemError, match=r"data area \[0x100000, 0x100000\) is empty"):
        HostPmem("pmem0", 0, MiB, MiB)


def test_the_info_block_reserves_everything_before_the_data_offset() -> None:
    info = parse_pfn_info(build_pfn_info(dataoff=18 * MiB, npfns=0, start_pad=2 * MiB, end_trunc=MiB))
    host = HostPmem.from_pfn_info("/dev/pmem0", 4 * GiB, GiB, info)
    assert (host.reserved_start, host.reserved_end) == (4 * GiB, 4 * GiB + 20 * MiB)
    assert (host.spa_base, host.data_start, host.data_end) == (4 * GiB + 20 * MiB, 4 * GiB + 20 * MiB, 5 * GiB - MiB)


def test_discovery_on_a_disk_that_is_not_pmem_says_so(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(b"")
    if not Path("/sys/dev/block").exists():
        pytest.skip("no sysfs here")
    with pytest.raises(HostPmemError, match=rf"^{path} (is on .*which is not a pmem device|: block device)"):
        discover(path)


def fake_sysfs(root: Path, majmin: str, *, partition_start: int | None, spa: int) -> None:
    namespace = root / "devices/ndbus0/region0/namespace0.0"
    namespace.mkdir(parents=True)
    (namespace / "resource").write_text(f"{spa:#x}\n")
    (root / "bus/nd").mkdir(parents=True)
    (namespace / "subsystem").symlink_to(root / "bus/nd")
    disk = root / "devices/ndbus0/region0/namespace0.0/block/pmem0"
    disk.mkdir(parents=True)
    (disk / "device").symlink_to(namespace)
    (disk / "size").write_text(f"{GiB // 512}\n")
    node = disk
    if partition_start is not None:
        node = disk / "pmem0p1"
        node.mkdir()
        (node / "partition").write_text("1\n")
        (node / "start").write_text(f"{partition_start // 512}\n")
        (node / "size").write_text(f"{(GiB - partition_start) // 512}\n")
    (root / "dev/block").mkdir(parents=True)
    (root / "dev/block" / majmin).symlink_to(node)


def majmin_of(path: Path) -> str:
    dev = os.stat(path).st_dev
    return f"{os.major(dev)}:{os.minor(dev)}"


def test_discovery_reads_the_namespace_resource_of_a_pmem_disk(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(b"")
    fake_sysfs(tmp_path / "sys", majmin_of(path), partition_start=None, spa=0x1_4000_0000)
    host = discover(path, sysfs=tmp_path / "sys")
    assert (host.device, host.spa_base, host.data_start, host.data_end) == (
        "/dev/pmem0", 0x1_4000_0000, 0x1_4000_0000, 0x1_4000_0000 + GiB
    )


def test_discovery_adds_the_partition_start(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(b"")
    fake_sysfs(tmp_path / "sys", majmin_of(path), partition_start=2 * MiB, spa=0x1_4000_0000)
    host = discover(path, sysfs=tmp_path / "sys", reserved=(0x1_4000_0000, 0x1_4000_0000 + 2 * MiB))
    assert (host.spa_base, host.data_end) == (0x1_4000_0000 + 2 * MiB, 0x1_4000_0000 + GiB)
    assert host.reserved_frames == range(0x140000, 0x140200)


def test_discovery_without_a_sysfs_entry_names_the_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(b"")
    with pytest.raises(HostPmemError, match=rf"block device {majmin_of(path)} has no sysfs entry"):
        discover(path, sysfs=tmp_path / "nosys")
