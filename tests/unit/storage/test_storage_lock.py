"""One holder per backing file, and a refusal that says who it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmemd.storage import BackingLock, LockHeld
from pmemd.storage.lock import HOLDER_XATTR
from tests.harness.files import immutable


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "img"
    path.write_bytes(bytes(4096))
    return path


def test_a_second_holder_is_refused_naming_the_first(backing: Path) -> None:
    with BackingLock(backing, domid=3):
        with pytest.raises(LockHeld, match=rf"^{backing} is already in use by pid {os.getpid()}, domain 3 \(pmemd\)"):
            BackingLock(backing, domid=4).acquire()


def test_the_lock_is_free_again_once_released(backing: Path) -> None:
    with BackingLock(backing, domid=3):
        pass
    with BackingLock(backing, domid=4) as second:
        assert second.held


def test_the_holder_record_goes_with_the_lock(backing: Path) -> None:
    with BackingLock(backing, domid=3):
        assert os.getxattr(backing, HOLDER_XATTR) == f"pid {os.getpid()}, domain 3 (pmemd)".encode()
    assert HOLDER_XATTR not in os.listxattr(backing)


def test_without_a_holder_record_the_refusal_names_the_pid_from_proc_locks(backing: Path) -> None:
    with BackingLock(backing, domid=3):
        os.removexattr(backing, HOLDER_XATTR)
        with pytest.raises(LockHeld, match=rf"already in use by pid {os.getpid()};"):
            BackingLock(backing, domid=4).acquire()


def test_holding_the_lock_does_not_change_the_file(backing: Path) -> None:
    before = backing.stat()
    with BackingLock(backing, domid=3):
        pass
    after = backing.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert backing.read_bytes() == bytes(4096)


def test_a_file_that_cannot_carry_the_holder_record_is_still_locked(backing: Path) -> None:
    with immutable(backing), BackingLock(backing, domid=1):
        with pytest.raises(LockHeld, match=f"in use by pid {os.getpid()}"):
            BackingLock(backing, domid=2).acquire()
