"""The device-state save file: what `xen-save-devices-state` writes and `--resume` reads.

Labels are not here: they live in the backing files, which the toolstack carries along.
This file holds the rest of what the guest can observe of its NVDIMMs, so a save → stop →
resume cycle gives the guest the same answer to every `_DSM` query.

    offset  field (little-endian)
    0       magic     b"PMEMDSAV"
    8       version   u16   SAVE_VERSION; older versions are read, newer ones refused
    10      reserved  u16   0
    12      count     u32   records, at most MAX_RECORDS
    16      records   count × (type u16, reserved u16 = 0, length u32, body[length])
    ...     crc32     u32   over every byte before it; nothing may follow

Records (each body self-describing where it reuses a DSM blob, `dsm/state_blob.py`):
    1 LAYOUT   domid u32 (informative: a restore may get a new domid), then the NVDIMMs as
               (slot u16, address u64, pmem size u64). Loading into a guest whose NVDIMMs
               differ is refused — poison addresses would name other memory.
    2 MEDIA    the MEDA blob: poison ranges and the injected subset.
    3 HEALTH   slot u16, then the HLTH blob: health, thresholds, injected conditions and the
               dirty-shutdown state and count (one record per DIMM).
    4 ARS      (version 2) the last scrub: its range and type, elapsed and remaining time, and,
               once settled, its result (records and restart point), so ARS status reads
               the same after a resume and a scrub in flight finishes on time.
    5 SECURITY (version 3) slot u16, then the SECU blob (`dsm/security.py`: salted digests,
               never a passphrase) with the DIMM's exact state — locked, frozen, attempt
               counts, an overwrite in flight — as a live migration must keep it (the
               per-DIMM security file instead records what a power-on starts from).
Version 1 is the layout without the ARS record (a v1 file resumes with no scrub on record);
versions 1 and 2 carry no security record (their DIMMs keep the state they have).

Loading checks the size bound, magic, version, checksum, the record count, every length
against what remains, and each body's own bounds; everything is parsed and checked before
the devices change, so a refused file leaves the guest's state as it was.
Errors: `SaveFileError` (a `ValueError`) with a message naming the file's defect.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from construct import (
    Array,
    Const,
    ConstructError,
    Float64l,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Prefixed,
    Struct,
    Terminated,
    this,
)

from pmemd.config import MAX_SLOTS, Config
from pmemd.dsm.devices import Dimm, Root
from pmemd.dsm.health import Health
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.poison import PoisonSet
from pmemd.dsm.scrub import Scrub, ScrubResult
from pmemd.dsm.security import Security
from pmemd.dsm.state_blob import StateFormatError

from .atomic import replace_file

MAGIC = b"PMEMDSAV"
SAVE_VERSION = 3
MAX_FILE_SIZE = 64 << 20
"""Two full poison sets (2 × 2^18 ranges × 16 bytes) and every DIMM's health fit with room."""

REC_LAYOUT, REC_MEDIA, REC_HEALTH, REC_ARS, REC_SECURITY = 1, 2, 3, 4, 5
RECORD_TYPES = {
    1: {REC_LAYOUT, REC_MEDIA, REC_HEALTH},
    2: {REC_LAYOUT, REC_MEDIA, REC_HEALTH, REC_ARS},
    3: {REC_LAYOUT, REC_MEDIA, REC_HEALTH, REC_ARS, REC_SECURITY},
}
"""The record types each version may hold."""
MAX_RECORDS = 3 + 2 * MAX_SLOTS
MAX_SECONDS = 1e9
"""Bound on saved scrub times: a scrub of 2^64 bytes at 1 GiB/s takes 1.7e10 s, but none is that long."""

Header = Struct(
    "magic" / Const(MAGIC),
    "version" / Int16ul,
    "reserved" / Const(0, Int16ul),
    "count" / Int32ul,
)
Record = Struct("type" / Int16ul, "reserved" / Const(0, Int16ul), "body" / Prefixed(Int32ul, GreedyBytes))
Body = Struct("records" / Array(this._.count, Record), Terminated)

LayoutRecord = Struct(
    "domid" / Int32ul,
    "count" / Int16ul,
    "nvdimms" / Array(this.count, Struct("slot" / Int16ul, "address" / Int64ul, "size" / Int64ul)),
    Terminated,
)
HealthRecord = Struct("slot" / Int16ul, "blob" / GreedyBytes)
SecurityRecord = HealthRecord  # the same framing: slot, then a self-describing blob
ArsRecord = Struct(
    "seq" / Int32ul,
    "address" / Int64ul,
    "length" / Int64ul,
    "type" / Int16ul,
    "previous_data" / Int8ul,
    "settled" / Int8ul,
    "elapsed" / Float64l,
    "remaining" / Float64l,
    "stop" / Int64ul,
    "restart_address" / Int64ul,
    "restart_length" / Int64ul,
    "count" / Int32ul,
    "records" / Array(this.count, Struct("address" / Int64ul, "length" / Int64ul)),
    Terminated,
)


class SaveFileError(ValueError):
    """A save file that cannot be loaded: the message says why."""


@dataclass(frozen=True)
class Saved:
    """A parsed, checked save file, not yet applied."""

    version: int
    domid: int
    poison: PoisonSet
    injected: PoisonSet
    health: Mapping[int, Health]
    scrub: Mapping[str, Any] | None
    security: Mapping[int, Security]


# -- writing ---------------------------------------------------------------------------------


def capture(config: Config, root: Root, dimms: Iterable[Dimm]) -> bytes:
    """The save file's bytes for the devices' state now."""
    records = [(REC_LAYOUT, _layout(config)), (REC_MEDIA, root.media.to_bytes())]
    for dimm in sorted(dimms, key=lambda d: d.config.slot):
        records.append((REC_HEALTH, HealthRecord.build({"slot": dimm.config.slot, "blob": dimm.health.to_bytes()})))
        records.append((REC_SECURITY, SecurityRecord.build({"slot": dimm.config.slot,
                                                             "blob": dimm.security.to_bytes()})))
    ars = _ars_record(root.media)
    if ars is not None:
        records.append((REC_ARS, ars))
    return build(SAVE_VERSION, records)


def build(version: int, records: list[tuple[int, bytes]]) -> bytes:
    """Frame records as a save file of `version` (tests use it to write older versions)."""
    head = Header.build({"version": version, "count": len(records)})
    body = b"".join(Record.build({"type": t, "body": b}) for t, b in records)
    data = head + body
    return data + Int32ul.build(zlib.crc32(data))


def save(path: Path, config: Config, root: Root, dimms: Iterable[Dimm]) -> int:
    """Write the save file atomically and durably (mode 0600); returns its size."""
    data = capture(config, root, dimms)
    replace_file(Path(path), data)
    return len(data)


def _layout(config: Config) -> bytes:
    nvdimms = [{"slot": d.slot, "address": d.address, "size": d.pmem_size} for d in sorted(config.nvdimms, key=lambda d: d.slot)]
    return LayoutRecord.build({"domid": config.domid, "count": len(nvdimms), "nvdimms": nvdimms})


def _ars_record(media: MediaErrors) -> bytes | None:
    scrub = media.ars.current
    if scrub is None:
        return None
    now = media.now()
    result = scrub.result
    return ArsRecord.build(
        {
            "seq": scrub.seq,
            "address": scrub.address,
            "length": scrub.length,
            "type": scrub.type,
            "previous_data": int(scrub.previous_data),
            "settled": int(result is not None),
            "elapsed": max(0.0, now - scrub.started_at),
            "remaining": max(0.0, scrub.deadline - now),
            "stop": scrub.stop,
            "restart_address": result.restart_address if result else 0,
            "restart_length": result.restart_length if result else 0,
            "count": len(result.records) if result else 0,
            "records": [{"address": a, "length": n} for a, n in (result.records if result else ())],
        }
    )


# -- reading ---------------------------------------------------------------------------------


def parse(data: bytes, config: Config, *, max_ranges: int | None = None, max_records: int | None = None) -> Saved:
    """Check a save file against `config` and return its contents; nothing is applied.

    `max_ranges` (poison bound) and `max_records` (ARS records per reply) default to the
    daemon's; pass the devices' own when they differ. Errors: `SaveFileError`.
    """
    if len(data) > MAX_FILE_SIZE:
        raise SaveFileError(f"save file is {len(data)} bytes, more than the {MAX_FILE_SIZE}-byte bound")
    if len(data) < Header.sizeof() + 4:
        raise SaveFileError(f"save file is truncated: {len(data)} bytes is less than a header")
    try:
        header = Header.parse(data)
    except ConstructError:
        raise SaveFileError("not a pmemd save file (bad magic)") from None
    if not 1 <= header.version <= SAVE_VERSION:
        raise SaveFileError(
            f"save file version {header.version} is not supported: this pmemd reads versions 1 to {SAVE_VERSION}"
        )
    (crc,) = (Int32ul.parse(data[-4:]),)
    if zlib.crc32(data[:-4]) != crc:
        raise SaveFileError("save file is truncated or corrupt (checksum mismatch)")
    if header.count > MAX_RECORDS:
        raise SaveFileError(f"save file lists {header.count} records, more than the bound of {MAX_RECORDS}")
    try:
        records = Body.parse(data[Header.sizeof() : -4], count=header.count).records
    except ConstructError:
        raise SaveFileError("save file is corrupt: a record length runs past the end or bytes follow the last") from None
    return _contents(header.version, records, config, max_ranges, max_records)


def _contents(version: int, records: list[Any], config: Config, max_ranges: int | None,
              max_records: int | None) -> Saved:
    allowed = RECORD_TYPES[version]
    found: dict[int, list[bytes]] = {}
    for record in records:
        if record.type not in allowed:
            raise SaveFileError(f"save file version {version} holds a record of unknown type {record.type}")
        found.setdefault(record.type, []).append(record.body)
    for singleton in (REC_LAYOUT, REC_MEDIA, REC_ARS):
        if len(found.get(singleton, [])) > 1:
            raise SaveFileError(f"save file holds record type {singleton} more than once")
    if REC_LAYOUT not in found or REC_MEDIA not in found:
        raise SaveFileError("save file lacks its layout or media record")
    try:
        domid = _check_layout(found[REC_LAYOUT][0], config)
        media = MediaErrors.create() if max_ranges is None else MediaErrors.create(max_ranges=max_ranges)
        media.restore(found[REC_MEDIA][0])
        health = _health(found.get(REC_HEALTH, []), config)
        security = _security(found.get(REC_SECURITY, []), config)
        scrub = _scrub(found[REC_ARS][0], config, max_records or media.ars.max_records) if REC_ARS in found else None
    except (StateFormatError, ConstructError) as e:
        raise SaveFileError(f"save file is corrupt: {e}") from None
    return Saved(version, domid, media.poison, media.injected, health, scrub, security)


def _check_layout(body: bytes, config: Config) -> int:
    layout = LayoutRecord.parse(body)
    saved = [(d.slot, d.address, d.size) for d in layout.nvdimms]
    ours = [(d.slot, d.address, d.pmem_size) for d in sorted(config.nvdimms, key=lambda d: d.slot)]
    if saved != ours:
        raise SaveFileError(
            "save file was written for other NVDIMMs: saved (slot, address, size) "
            f"{[(s, hex(a), n) for s, a, n in saved]}, configured {[(s, hex(a), n) for s, a, n in ours]}"
        )
    return layout.domid


def _health(bodies: list[bytes], config: Config) -> dict[int, Health]:
    slots = {d.slot for d in config.nvdimms}
    health: dict[int, Health] = {}
    for body in bodies:
        record = HealthRecord.parse(body)
        if record.slot not in slots or record.slot in health:
            raise SaveFileError(f"save file holds health for slot {record.slot} twice or for no configured DIMM")
        health[record.slot] = Health.from_bytes(record.blob)
    return health


def _security(bodies: list[bytes], config: Config) -> dict[int, Security]:
    slots = {d.slot for d in config.nvdimms}
    security: dict[int, Security] = {}
    for body in bodies:
        record = SecurityRecord.parse(body)
        if record.slot not in slots or record.slot in security:
            raise SaveFileError(f"save file holds security for slot {record.slot} twice or for no configured DIMM")
        security[record.slot] = Security.from_bytes(record.blob)
    return security


def _scrub(body: bytes, config: Config, max_records: int) -> dict[str, Any]:
    r = ArsRecord.parse(body)
    end = r.address + r.length
    times_ok = all(math.isfinite(t) and 0.0 <= t <= MAX_SECONDS for t in (r.elapsed, r.remaining))
    if (
        r.length == 0
        or end > 1 << 64
        or not r.address <= r.stop <= end
        or r.previous_data > 1
        or r.settled > 1
        or not times_ok
        or r.count > max_records
        or (not r.settled and (r.count or r.restart_length))
        or any(a < r.address or a + n > end or n == 0 for a, n in ((x.address, x.length) for x in r.records))
        or (r.restart_length and r.restart_address + r.restart_length != end)
    ):
        raise SaveFileError("save file's ARS record holds out-of-range values")
    return dict(r)


# -- applying --------------------------------------------------------------------------------


def restore(data: bytes, config: Config, root: Root, dimms: Iterable[Dimm]) -> Saved:
    """Load a save file's state into the devices: all of it, or (on `SaveFileError`) none."""
    media = root.media
    saved = parse(data, config, max_ranges=media.poison.max_ranges, max_records=media.ars.max_records)
    media.poison, media.injected = saved.poison, saved.injected
    for dimm in dimms:
        if dimm.config.slot in saved.health:
            dimm.health = saved.health[dimm.config.slot]
        if dimm.config.slot in saved.security:
            dimm.security = saved.security[dimm.config.slot]
    media.ars.current = None if saved.scrub is None else _rebuild_scrub(saved.scrub, media.now())
    if media.ars.current is not None:
        # ArsState numbers scrubs; continue after the saved one so sequence numbers stay unique.
        media.ars._seq = max(media.ars._seq, media.ars.current.seq)
        if media.ars.current.result is None:
            media.scrub_started()  # wake the scrubber: a scrub is in flight again
    return saved


def load(path: Path, config: Config, root: Root, dimms: Iterable[Dimm]) -> Saved:
    """Read and `restore` a save file. Errors: `SaveFileError`, `OSError`."""
    path = Path(path)
    with path.open("rb") as f:
        data = f.read(MAX_FILE_SIZE + 1)
    return restore(data, config, root, dimms)


def _rebuild_scrub(s: Mapping[str, Any], now: float) -> Scrub:
    scrub = Scrub(
        s["seq"], s["address"], s["length"], s["type"], bool(s["previous_data"]),
        now - s["elapsed"], now + s["remaining"], s["stop"],
    )
    if s["settled"]:
        scrub.result = ScrubResult(
            s["address"], s["length"], s["type"],
            tuple((r.address, r.length) for r in s["records"]),
            s["restart_address"], s["restart_length"],
        )
    return scrub


class GuestStateFiles:
    """One guest's devices as QMP's save/load commands reach them (`qmp.control.DeviceStateFiles`)."""

    def __init__(self, config: Config, root: Root, dimms: Iterable[Dimm],
                 after_load: Callable[[], None] | None = None) -> None:
        self.config, self.root, self.dimms = config, root, list(dimms)
        self.after_load = after_load  # e.g. restart an overwrite the file says is in flight

    def save(self, path: Path) -> int:
        return save(path, self.config, self.root, self.dimms)

    def load(self, path: Path) -> tuple[int, int]:
        saved = load(path, self.config, self.root, self.dimms)
        if self.after_load is not None:
            self.after_load()
        return saved.version, saved.domid
