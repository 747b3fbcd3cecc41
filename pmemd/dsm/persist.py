"""A guest's media and health state across daemon restarts: one blob, one file.

The blob (kind b"GSTA") nests the root's MEDA blob and one HLTH blob per DIMM slot, each
self-describing, so the lifecycle owner may embed the whole or the parts in its save files.
`write_state_file` replaces the file atomically (temp file, fsync, rename, fsync of the
directory): a crash leaves the old state or the new, never half of either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from construct import Array, GreedyBytes, Int16ul, Int32ul, Prefixed, Struct, Terminated, this

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
