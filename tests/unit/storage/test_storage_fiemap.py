"""The FIEMAP ABI and the streaming reader, against the kernel on this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmemd.storage.fiemap import (
    FS_IOC_FIEMAP,
    ExtentFlag,
    fiemap_extent,
    fiemap_extents,
    fiemap_header,
    row_format,
)
from pmemd.storage.testing import fiemap_unsupported, make_fragmented


def test_layouts_have_the_kernel_sizes() -> None:
    assert fiemap_header.sizeof() == 32
    assert fiemap_extent.sizeof() == 56
    assert FS_IOC_FIEMAP == (3 << 30) | (32 << 16) | (ord("f") << 8) | 11


def test_row_format_reads_what_the_construct_declaration_reads() -> None:
    fields = dict(fe_logical=0x1000, fe_physical=0xABC000, fe_length=0x3000, fe_flags=0x2001)
    raw = fiemap_extent.build(fields)
    assert row_format(fiemap_extent).unpack(raw) == (0x1000, 0xABC000, 0x3000, 0x2001)
    assert row_format(fiemap_extent).size == len(raw)


def test_extent_flags_have_the_uapi_values() -> None:
    assert (ExtentFlag.LAST, ExtentFlag.UNWRITTEN, ExtentFlag.SHARED) == (0x1, 0x800, 0x2000)


def test_stream_is_the_same_whatever_the_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "frag"
    make_fragmented(path, 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        one_at_a_time = list(fiemap_extents(fd, batch=1))
        batched = list(fiemap_extents(fd, batch=512))
    finally:
        os.close(fd)
    assert one_at_a_time == batched
    assert len(batched) == 64
    assert batched[-1].flags & ExtentFlag.LAST


def test_stream_covers_only_the_requested_range(tmp_path: Path) -> None:
    path = tmp_path / "frag"
    make_fragmented(path, 32)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(fiemap_extents(fd, 8 * 4096, 4 * 4096, batch=3))
    finally:
        os.close(fd)
    assert [e.logical // 4096 for e in extents] == [8, 9, 10, 11]


def test_a_hole_is_absent_from_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        f.seek(0x40000)
        f.write(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(fiemap_extents(fd))
    finally:
        os.close(fd)
    assert [(e.logical, e.length) for e in extents] == [(0x40000, 4096)]


@pytest.fixture(autouse=True)
def _needs_fiemap(tmp_path: Path) -> None:
    if reason := fiemap_unsupported(tmp_path):
        pytest.skip(reason)
