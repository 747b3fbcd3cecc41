"""A guest's media and health state as bytes: what outlives the daemon, with no I/O.

The blob (kind b"GSTA") nests the root's MEDA blob and one HLTH blob per DIMM slot, each
self-describing, so the lifecycle owner may embed the whole or the parts in its save files.

The daemon's state file (kind b"GFIL", written by `pmemd.daemon.state_file`) wraps that blob
with a marker: "running" from start-up until a clean stop. Finding it still "running" at the
next start means the previous daemon died without stopping — a dirty shutdown, which the
DIMMs' health counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


def state_file_bytes(root: Root, dimms: Iterable[Dimm], *, running: bool) -> bytes:
    """The state file's contents: the guest state and the clean-stop marker."""
    body = StateFileBodyV1.build({"running": int(running), "state": guest_state_bytes(root, dimms)})
    return wrap(FILE_KIND, FILE_VERSION, body)


def restore_state_file(blob: bytes, root: Root, dimms: Iterable[Dimm]) -> SavedRun:
    """Restore the devices from a state file's contents.

    Errors: `StateFormatError` for a corrupt or newer file (nothing changes then).
    """
    _, body = unwrap(FILE_KIND, FILE_VERSION, blob)
    parsed = parse_body(StateFileBodyV1, body)
    if parsed.running > 1:
        raise StateFormatError(f"state file marker {parsed.running} is neither 0 nor 1")
    restore_guest_state(parsed.state, root, dimms)
    return SavedRun(bool(parsed.running))
