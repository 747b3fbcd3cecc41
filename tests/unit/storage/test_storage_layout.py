"""Layout fingerprints: a file whose blocks moved since `prepare` is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pmemd.storage import FileExtents, LayoutMoved, layout_fingerprint, prepare, verify_layout
from pmemd.storage.testing import SyntheticExtents, fiemap_unsupported

MiB = 1 << 20


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, str]:
    if reason := fiemap_unsupported(tmp_path):
        pytest.skip(reason)
    path = tmp_path / "img"
    return path, prepare(path, MiB).fingerprint


def test_an_unchanged_file_verifies(prepared: tuple[Path, str]) -> None:
    path, fingerprint = prepared
    with path.open("r+b") as f:
        f.write(b"guest writes do not move blocks")
    assert verify_layout(FileExtents(path, MiB), MiB, fingerprint) == fingerprint


def test_a_file_whose_blocks_moved_is_refused(prepared: tuple[Path, str]) -> None:
    path, fingerprint = prepared
    shutil.copyfile(path, path.with_suffix(".copy"))  # same bytes, new blocks
    path.with_suffix(".copy").replace(path)
    with pytest.raises(LayoutMoved, match=rf"^{path}: extent layout changed since it was recorded"):
        verify_layout(FileExtents(path, MiB), MiB, fingerprint)


def test_the_fingerprint_depends_on_every_extent() -> None:
    prints = {
        layout_fingerprint(SyntheticExtents(4, stride=2), 4 * 4096),
        layout_fingerprint(SyntheticExtents(4, stride=3), 4 * 4096),
        layout_fingerprint(SyntheticExtents(4, stride=2, physical_base=1 << 31), 4 * 4096),
        layout_fingerprint(SyntheticExtents(2, pages=2, stride=2), 4 * 4096),
    }
    assert len(prints) == 4
