"""`pmemd prepare`: a backing file becomes allocated, written and verified; data survives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmemd.config import NvdimmConfig
from pmemd.storage import (
    BackingLock,
    BackingRefused,
    FileExtents,
    LockHeld,
    layout_fingerprint,
    prepare,
    prepare_backing,
    recorded_layout,
    validated,
)
from pmemd.storage.testing import fiemap_unsupported

MiB = 1 << 20


@pytest.fixture
def fs(tmp_path: Path) -> Path:
    if reason := fiemap_unsupported(tmp_path):
        pytest.skip(reason)
    return tmp_path


def nvdimm(path: Path, size: int = 4 * MiB) -> NvdimmConfig:
    return NvdimmConfig(path, size, 0, 0, 0, False, 1 << 32, None, 0)


def mappable(path: Path, size: int) -> bool:
    try:
        for _ in validated(FileExtents(path, size).extents(), str(path), size):
            pass
    except BackingRefused:
        return False
    return True


def test_a_sparse_file_is_accepted_after_prepare_backing(fs: Path) -> None:
    path = fs / "img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    assert not mappable(path, 4 * MiB)
    report = prepare_backing(nvdimm(path))
    assert mappable(path, 4 * MiB)
    assert report.zeroed == 4 * MiB


def test_unwritten_extents_are_converted_to_written(fs: Path) -> None:
    path = fs / "img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 4 * MiB)
    os.close(fd)
    assert not mappable(path, 4 * MiB)
    prepare(path, 4 * MiB)
    assert mappable(path, 4 * MiB)


def test_a_missing_file_is_created_at_the_configured_size(fs: Path) -> None:
    path = fs / "new"
    report = prepare(path, 2 * MiB)
    assert (report.created, report.previous_size, path.stat().st_size) == (True, 0, 2 * MiB)
    assert mappable(path, 2 * MiB)


def test_existing_data_is_kept_and_the_gaps_read_as_zero(fs: Path) -> None:
    path = fs / "img"
    with open(path, "wb") as f:
        f.truncate(MiB)
        f.seek(0x3000)
        f.write(b"guest data")
    prepare(path, 2 * MiB)
    content = path.read_bytes()
    assert content[0x3000:0x300A] == b"guest data"
    assert content.count(0) == 2 * MiB - len(b"guest data")


def test_a_written_file_needs_no_zeroing(fs: Path) -> None:
    path = fs / "img"
    path.write_bytes(b"\x11" * MiB)
    assert prepare(path, MiB).zeroed == 0


def test_a_file_larger_than_configured_is_refused_not_truncated(fs: Path) -> None:
    path = fs / "img"
    path.write_bytes(bytes(3 * MiB))
    with pytest.raises(BackingRefused, match="larger than the configured 0x200000; refusing to truncate"):
        prepare(path, 2 * MiB)
    assert path.stat().st_size == 3 * MiB


def test_the_verified_layout_fingerprint_is_recorded_with_the_file(fs: Path) -> None:
    path = fs / "img"
    report = prepare(path, MiB)
    assert recorded_layout(path) == report.fingerprint == layout_fingerprint(FileExtents(path, MiB), MiB)


def test_a_file_held_by_a_daemon_is_not_prepared(fs: Path) -> None:
    path = fs / "img"
    path.write_bytes(bytes(MiB))
    with BackingLock(path, domid=7):
        with pytest.raises(LockHeld, match="domain 7"):
            prepare(path, 2 * MiB)
    assert path.stat().st_size == MiB
