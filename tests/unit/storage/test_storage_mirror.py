"""Mirrored guest PMEM: fill from the file, write back only changed blocks, durably."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmemd.storage.mirror import BLOCK, Mirror

SIZE = 4 * BLOCK


def backing(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "nv0.img"
    path.write_bytes(content + b"L" * 8192)  # a label area beyond the guest PMEM
    return path


def test_fill_copies_the_file_into_guest_memory(tmp_path: Path) -> None:
    content = bytes(range(256)) * (SIZE // 256)
    guest = bytearray(SIZE)
    Mirror(backing(tmp_path, content), memoryview(guest)).fill()
    assert bytes(guest) == content


def test_write_back_writes_only_changed_blocks_at_their_offsets(tmp_path: Path) -> None:
    path = backing(tmp_path, bytes(SIZE))
    guest = bytearray(SIZE)
    mirror = Mirror(path, memoryview(guest))
    mirror.fill()
    guest[2 * BLOCK + 100 : 2 * BLOCK + 104] = b"DATA"
    assert mirror.write_back() == BLOCK
    data = path.read_bytes()
    assert data[2 * BLOCK + 100 : 2 * BLOCK + 104] == b"DATA"
    assert data[SIZE:] == b"L" * 8192  # labels untouched
    assert mirror.write_back() == 0  # nothing changed since
    assert (mirror.stats.write_backs, mirror.stats.flushes, mirror.stats.bytes_written) == (1, 2, BLOCK)


def test_adopted_frames_are_written_back_where_they_differ_from_the_file(tmp_path: Path) -> None:
    path = backing(tmp_path, bytes(SIZE))
    guest = bytearray(b"\x01" * SIZE)  # a previous daemon's guest wrote everything, unflushed
    mirror = Mirror(path, memoryview(guest))
    mirror.adopt()
    assert bytes(guest) == b"\x01" * SIZE  # adopting never overwrites guest memory
    assert mirror.write_back() == SIZE
    assert path.read_bytes()[:SIZE] == b"\x01" * SIZE


def test_a_file_smaller_than_the_guest_pmem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.img"
    path.write_bytes(bytes(BLOCK))
    with pytest.raises(OSError, match="smaller than the guest PMEM"):
        Mirror(path, memoryview(bytearray(SIZE)))
