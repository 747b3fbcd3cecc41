"""A guest's media and health state across daemon restarts: one blob, one file.

The blob (kind b"GSTA") nests the root's MEDA blob and one HLTH blob per DIMM slot, each
self-describing, so the lifecycle owner may embed the whole or the parts in its save files.
`write_state_file` replaces the file atomically (temp file, fsync, rename, fsync of the
directory): a crash leaves the old state or the new, never half of either.

The daemon's own file (`save_state_file`/`load_state_file`, kind b"GFIL") wraps that blob
with a marker: "running" from start-up until a clean stop. Finding it still "running" at the
next start means the previous daemon died without stopping — a dirty shutdown, which the
DIMMs' health counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from construct import Array, GreedyBytes, Int8ul, Int16ul, Int32ul, Prefixed, Struct, Terminated, this

from .devices import Dimm, Root
from .health import Health
from .state_blob import StateFormatError, parse_body, unwrap, wrap

BLOB_KIND = b"GSTA"
BLOB_VERSION = 1

GuestBodyV1 = Struct(
    "media" / Prefixed(Int32ul, GreedyBytes),
    "count" / Int16ul,
    "dimms" / Array(this.count, Struct("slot" / Int16ul, "health" / Prefixed(Int32ul, GreedyBytes))),
    Terminated,
)


def guest_state_bytes(root: Root, dimms: Iterable[Dimm]) -> bytes:
    """Poison, injected ranges and every DIMM's health, as one versioned blob."""
    entries = [{"slot": d.config.slot, "health": d.health.to_bytes()} for d in dimms]
    body = GuestBodyV1.build({"media": root.media.to_bytes(), "count": len(entries), "dimms": entries})
    return wrap(BLOB_KIND, BLOB_VERSION, body)


def restore_guest_state(blob: bytes, root: Root, dimms: Iterable[Dimm]) -> None:
    """Load a `guest_state_bytes` blob into the devices; DIMMs absent from it keep their state.

    Everything is parsed before anything changes. Errors: `StateFormatError`.
    """
    _, body = unwrap(BLOB_KIND, BLOB_VERSION, blob)
    parsed = parse_body(GuestBodyV1, body)
    health = {entry.slot: Health.from_bytes(entry.health) for entry in parsed.dimms}
    if len(health) != parsed.count:
        raise StateFormatError("guest state lists a DIMM slot twice")
    root.media.restore(parsed.media)
    for dimm in dimms:
        if dimm.config.slot in health:
            dimm.health = health[dimm.config.slot]


FILE_KIND = b"GFIL"
FILE_VERSION = 1

StateFileBodyV1 = Struct(
    "running" / Int8ul,  # 1 from start-up until a clean stop: still 1 on the next start = dirty shutdown
    "state" / Prefixed(Int32ul, GreedyBytes),  # a GSTA blob
    Terminated,
)
"""Version 1 of the daemon's own state file: the guest state plus the clean-stop marker."""


@dataclass(frozen=True)
class SavedRun:
    """What the state file said about the previous run."""

    running: bool
    """The previous daemon never recorded a clean stop (killed, crashed, host lost power)."""


def save_state_file(path: Path, root: Root, dimms: Iterable[Dimm], *, running: bool) -> None:
    """Write the guest's state with the clean-stop marker (`running` False only on a clean stop)."""
    body = StateFileBodyV1.build({"running": int(running), "state": guest_state_bytes(root, dimms)})
    write_state_file(path, wrap(FILE_KIND, FILE_VERSION, body))


def load_state_file(path: Path, root: Root, dimms: Iterable[Dimm]) -> SavedRun | None:
    """Restore the devices from `path`; None (nothing changed) when there is no file yet.

    Errors: `StateFormatError` for a corrupt or newer file (nothing changes then).
    """
    blob = read_state_file(path)
    if blob is None:
        return None
    _, body = unwrap(FILE_KIND, FILE_VERSION, blob)
    parsed = parse_body(StateFileBodyV1, body)
    if parsed.running > 1:
        raise StateFormatError(f"state file marker {parsed.running} is neither 0 nor 1")
    restore_guest_state(parsed.state, root, dimms)
    return SavedRun(bool(parsed.running))


def write_state_file(path: Path, blob: bytes) -> None:
    """Atomically replace `path` with `blob`, durable once this returns."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state_file(path: Path) -> bytes | None:
    """The saved blob, or None when there is none yet (first start)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
