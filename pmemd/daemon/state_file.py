"""The guest state file: media and health state kept beside the DIMMs across daemon restarts.

`StateFile` is an `atomic.HeldFile`, the holder of every small file the daemon rewrites whole
(the firmware file uses it too; the security files use `HeldFile` directly).

Opened while the daemon may still open it (before `--depriv`): `StateFile` holds the
directory and the file for the daemon's life (`atomic.HeldFile`), so a chroot or a lost uid
does not stop saves. The format is `pmemd.dsm.guest_state`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pmemd.config import Config
from pmemd.dsm.devices import Dimm, Root
from pmemd.dsm.guest_state import SavedRun, restore_state_file, state_file_bytes

from .atomic import HeldFile

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


class StateFile(HeldFile):
    """The open state file; resources: two descriptors, closed by `close`."""

    def save(self, root: Root, dimms: Sequence[Dimm], *, running: bool) -> None:
        """Write the state with its clean-stop marker, durable on return."""
        self.write(state_file_bytes(root, dimms, running=running))
