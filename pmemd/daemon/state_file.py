"""The guest state file: media and health state kept beside the DIMMs across daemon restarts.

`StateFile` itself holds any small file the daemon rewrites whole (the firmware file uses it too).

Opened while the daemon may still open it (before `--depriv`): `StateFile` holds the
directory and the file for the daemon's life and never names a path again, so a chroot or
a lost uid does not stop saves. A save is atomic (`atomic.replace_in`) where the daemon may
still create files in the directory, else in place through the file's own descriptor.
The format is `pmemd.dsm.guest_state`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pmemd.config import Config
from pmemd.dsm.devices import Dimm, Root
from pmemd.dsm.guest_state import SavedRun, restore_state_file, state_file_bytes

from .atomic import replace_in, write_all

STATE_SUFFIX = ".pmemd-state"


def state_file_path(config: Config) -> Path | None:
    """`[dsm] state_file`, else beside the first NVDIMM's backing file; None without NVDIMMs.

    Beside the backing file, not keyed by domid: health belongs to the DIMM, and a guest
    gets a new domid on every boot.
    """
    if config.dsm.state_file is not None:
        return config.dsm.state_file
    if not config.nvdimms:
        return None
    backing = config.nvdimms[0].backing
    return backing.with_name(backing.name + STATE_SUFFIX)


def load_state_file(path: Path, root: Root, dimms: Iterable[Dimm]) -> SavedRun | None:
    """Restore the devices from `path`; None (nothing changed) when there is no file yet.

    Errors: `StateFormatError` for a corrupt or newer file (nothing changes then).
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    return restore_state_file(blob, root, dimms)


class StateFile:
    """The open state file; resources: two descriptors, closed by `close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
        except BaseException:
            os.close(self.dir_fd)
            raise

    def save(self, root: Root, dimms: Sequence[Dimm], *, running: bool) -> None:
        """Write the state with its clean-stop marker, durable on return."""
        self.write(state_file_bytes(root, dimms, running=running))

    def read(self) -> bytes:
        """The file's contents (empty when it was just created)."""
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0) if size else b""

    def write(self, blob: bytes) -> None:
        """Replace the contents with `blob`, durable on return (atomic where the directory allows)."""
        try:
            self._replace(blob)
        except PermissionError:  # an unprivileged uid in a directory it cannot write
            self._overwrite(blob)

    def _replace(self, blob: bytes) -> None:
        replace_in(self.dir_fd, self.path.name, blob)
        fresh = os.open(self.path.name, os.O_RDWR | os.O_CLOEXEC, dir_fd=self.dir_fd)  # the new inode
        os.close(self.fd)
        self.fd = fresh

    def _overwrite(self, blob: bytes) -> None:
        """In place through the held descriptor: the blob, then the length, then fsync."""
        write_all(self.fd, blob, 0)
        os.ftruncate(self.fd, len(blob))
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)
