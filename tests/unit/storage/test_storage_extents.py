"""The rules an extent stream must meet before any of it is mapped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmemd.storage import BackingRefused, Extent, ExtentFlag, FileExtents, validated
from pmemd.storage.testing import fiemap_unsupported

P = 4096


def check(extents: list[Extent], size: int) -> list[Extent]:
    return list(validated(iter(extents), "img", size))


def test_contiguous_coverage_passes_unchanged() -> None:
    extents = [Extent(0, 8 * P, 2 * P, 0), Extent(2 * P, 3 * P, P, ExtentFlag.MERGED | ExtentFlag.LAST)]
    assert check(extents, 3 * P) == extents


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        (ExtentFlag.UNWRITTEN, "unwritten"),
        (ExtentFlag.DELALLOC, "delayed-allocation"),
        (ExtentFlag.ENCODED, "encoded"),
        (ExtentFlag.DATA_ENCRYPTED, "encrypted"),
        (ExtentFlag.DATA_INLINE, "inline"),
        (ExtentFlag.DATA_TAIL, "tail-packed"),
        (ExtentFlag.SHARED, "shared with another file"),
        (ExtentFlag.UNKNOWN, "unknown physical location"),
        (ExtentFlag.NOT_ALIGNED, "not block aligned"),
        (0x40000, "flags 0x40000 that pmemd does not know"),
    ],
)
def test_an_extent_with_a_refused_flag_is_refused_naming_file_offset_and_reason(flag: int, words: str) -> None:
    extents = [Extent(0, 0, P, 0), Extent(P, 9 * P, P, flag)]
    with pytest.raises(BackingRefused, match=f"^img at file offset 0x1000: extent of 0x1000 bytes .*{words}"):
        check(extents, 2 * P)


@pytest.mark.parametrize(
    ("extent", "words"),
    [
        (Extent(0, 0x10200, P, 0), "physical offset 0x10200"),
        (Extent(0, 0, 0x1800, 0), "length 0x1800"),
        (Extent(0x200, 0, P, 0), "logical offset 0x200"),
    ],
)
def test_an_extent_not_4k_aligned_is_refused(extent: Extent, words: str) -> None:
    with pytest.raises(BackingRefused, match=f"not 4 KiB aligned: {words}"):
        check([extent], 2 * P)


def test_a_hole_between_extents_is_refused_at_its_start() -> None:
    with pytest.raises(BackingRefused, match=r"^img at file offset 0x1000: hole of 0x2000 bytes"):
        check([Extent(0, 0, P, 0), Extent(3 * P, 5 * P, P, 0)], 4 * P)


def test_a_short_tail_is_a_hole_up_to_the_end_of_the_file() -> None:
    with pytest.raises(BackingRefused, match=r"at file offset 0x2000: hole of 0x2000 bytes up to the end"):
        check([Extent(0, 0, 2 * P, 0)], 4 * P)


def test_an_empty_map_is_one_hole() -> None:
    with pytest.raises(BackingRefused, match=r"at file offset 0x0: hole of 0x4000 bytes"):
        check([], 4 * P)


def test_overlapping_extents_are_refused() -> None:
    with pytest.raises(BackingRefused, match="overlaps the previous one, which ends at 0x2000"):
        check([Extent(0, 0, 2 * P, 0), Extent(P, 7 * P, 2 * P, 0)], 3 * P)


def test_extents_past_the_file_size_are_dropped_whatever_their_flags() -> None:
    extents = [Extent(0, 0, P, 0), Extent(P, 4 * P, P, ExtentFlag.UNWRITTEN | ExtentFlag.LAST)]
    assert check(extents, P) == extents[:1]


@pytest.fixture
def fs(tmp_path: Path) -> Path:
    if reason := fiemap_unsupported(tmp_path):
        pytest.skip(reason)
    return tmp_path


def test_a_file_of_the_wrong_size_is_refused(fs: Path) -> None:
    path = fs / "img"
    path.write_bytes(bytes(3 * P))
    with pytest.raises(BackingRefused, match=r"size is 0x3000 bytes but the configuration says 0x4000"):
        list(FileExtents(path, 4 * P).extents())


def test_a_missing_file_is_refused(fs: Path) -> None:
    with pytest.raises(BackingRefused, match="cannot open: No such file"):
        list(FileExtents(fs / "absent", P).extents())


def test_a_directory_is_refused(fs: Path) -> None:
    with pytest.raises(BackingRefused, match="is not a regular file"):
        list(FileExtents(fs, P).extents())


def test_a_sparse_file_is_refused(fs: Path) -> None:
    path = fs / "img"
    with open(path, "wb") as f:
        f.truncate(4 * P)
    with pytest.raises(BackingRefused, match=r"img at file offset 0x0: hole of 0x4000 bytes .*pmemd prepare"):
        list(validated(FileExtents(path, 4 * P).extents(), str(path), 4 * P))


def test_a_fallocated_file_is_refused_as_unwritten(fs: Path) -> None:
    path = fs / "img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 4 * P)
    os.close(fd)
    with pytest.raises(BackingRefused, match=r"img at file offset 0x0: extent of 0x4000 bytes is unwritten"):
        list(validated(FileExtents(path, 4 * P).extents(), str(path), 4 * P))


def test_a_written_file_passes(fs: Path) -> None:
    path = fs / "img"
    path.write_bytes(b"\x5a" * 4 * P)
    extents = list(validated(FileExtents(path, 4 * P).extents(), str(path), 4 * P))
    assert sum(e.length for e in extents) == 4 * P
