"""Why the storage pipeline refuses a backing file, one exception per rule family.

    StorageError                    anything below; never raised itself
    ├── BackingRefused              the file cannot back guest PMEM as it is (size, extents)
    ├── FrameRefused                an extent lands on a host frame the guest may not have
    ├── LayoutMoved                 the extents differ from the recorded fingerprint
    ├── LockHeld                    another process owns the backing file
    ├── PfnInfoError                the pfn/dax info block is corrupt or unsupported
    └── HostPmemError               the host pmem description cannot be found or is invalid

Every message names the file (or device) and, where there is one, the file offset, so an
operator can act on one line of log.
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base of every storage refusal."""


class BackingRefused(StorageError):
    """The backing file breaks a rule; `offset` is the file offset concerned, if any."""

    def __init__(self, path: str | Path, offset: int | None, reason: str) -> None:
        where = f"{path}" if offset is None else f"{path} at file offset {offset:#x}"
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.offset = offset
        self.reason = reason


class FrameRefused(StorageError):
    """A page of the file maps to a host frame outside the guest-mappable data area."""

    def __init__(self, path: str | Path, offset: int, mfn: int, reason: str) -> None:
        super().__init__(f"{path} at file offset {offset:#x}: host frame {mfn:#x} {reason}")
        self.path = str(path)
        self.offset = offset
        self.mfn = mfn
        self.reason = reason


class LayoutMoved(StorageError):
    """The file's extents are not where they were when the fingerprint was recorded."""


class LockHeld(StorageError):
    """Another holder has the backing file; the message names it."""


class PfnInfoError(StorageError):
    """The pfn/dax info block failed a check; the message says which."""


class HostPmemError(StorageError):
    """Host pmem discovery failed, or an explicit description is inconsistent."""
