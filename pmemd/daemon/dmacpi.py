"""Publishing the guest's NFIT and NVDR body through xenstore "dm-acpi", as hvmloader loads them.

The Xen vNVDIMM series (v1-v3, reference §2.5) has the toolstack reserve a buffer in guest RAM
below 4 GiB and write ``/local/domain/<D>/hvmloader/dm-acpi/{address,length}`` ("0x%x" hex) in
a ``hvmloader`` directory the guest may only read. The device model copies its blobs into the
buffer (here through the foreign mapping) and describes each as
``dm-acpi/<NAME>/{type,offset,length}`` (decimal; ``offset`` counts from ``address``); when the
guest boots, hvmloader reads them once and builds the tables.

hvmloader drops blobs *silently* (reviewers' complaint, reference §4.8), so everything it would
drop is refused here instead, with a clear error carrying a short symbolic ``code`` (what the
state key's ``error-code`` reports):

- ``dm-acpi-missing``     the toolstack wrote no address/length (nothing would be loaded)
- ``dm-acpi-bad-key``     address/length not "0x..." hex (hvmloader and QEMU would disagree)
- ``dm-acpi-above-4g``    the buffer reaches above 4 GiB (hvmloader is a 32-bit program)
- ``dm-acpi-not-ram``     the buffer is not guest RAM (the foreign mapping is refused)
- ``dm-acpi-too-small``   the blobs do not fit ``length``
- ``dm-acpi-too-many``    the directory would list more than 16 entries (hvmloader gives up on all)
- ``dm-acpi-blacklisted`` a table signature or device name that hvmloader skips
- ``dm-acpi-bad-blob``    a malformed blob or entry name (our bug, caught before the guest sees it)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from acpi.aml import Path as AmlPath
from acpi.table import HEADER_SIZE, TableHeader
from pmemd.daemon.state_key import guest_read_only
from pmemd.daemon.tables import Tables
from pmemd.xen.api import DeviceModelHypervisor
from pmemd.xen.errors import HypervisorError
from pmemd.xen.page import PAGE_SIZE
from pmemd.xenstore import NoEntryError, Transaction, XenstoreClient
from pmemd.xenstore.wire import domain_path

log = structlog.get_logger("pmemd.dmacpi")

FOUR_GIB = 1 << 32
TYPE_TABLE = 0  # a complete ACPI table, header included; hvmloader recomputes its checksum
TYPE_DEVICE_BODY = 1  # AML inside Device(NAME); hvmloader wraps it in Scope(\_SB) in a new SSDT
# ACPI_MAX_SECONDARY_TABLES: hvmloader gives up on *every* blob when the directory lists more
# entries than this (address and length included), less the secondary tables it built itself.
MAX_ENTRIES = 16
# Signatures of tables Xen's hvmloader builds (its blacklist); SSDT is allowed. A header carries the
# signature, not the table's name: the RSDP's starts "RSD PTR ", the FADT's is FACP, the MADT's APIC
# (the names are listed too, to be safe).
SIGNATURE_BLACKLIST = frozenset(
    {"RSD ", "RSDP", "FACS", "FACP", "FADT", "DSDT", "APIC", "MADT", "HPET", "WAET", "TCPA", "SRAT", "SLIT",
     "RSDT", "XSDT"})
# Devices hvmloader's own DSDT declares under \_SB (short names padded with "_" as in AML).
DEVICE_NAME_BLACKLIST = frozenset({"MEM0", "PCI0", "AC__", "BAT0", "BAT1", "TPM_"})
BUFFER_KEYS = ("address", "length")
BLOB_ALIGN = 8  # start of each blob in the buffer
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_]{1,16}")


class DmAcpiError(Exception):
    """Publication refused; ``code`` is the symbolic reason (module docstring)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Blob:
    """One thing to publish: entry name, dm-acpi type and bytes."""

    name: str
    type: int
    data: bytes


@dataclass(frozen=True)
class Entry:
    """What ``dm-acpi/<name>/`` says: type, offset from ``address``, length."""

    name: str
    type: int
    offset: int
    length: int

    def as_dict(self) -> dict[str, int | str]:
        return {"name": self.name, "type": self.type, "offset": self.offset, "length": self.length}


@dataclass(frozen=True)
class Buffer:
    """The toolstack's reservation: guest-physical ``address`` and ``length`` in bytes."""

    address: int
    length: int


@dataclass(frozen=True)
class Publication:
    """What was published: the buffer and its entries."""

    buffer: Buffer
    entries: tuple[Entry, ...]


def dm_acpi_path(domid: int) -> str:
    """``/local/domain/<D>/hvmloader/dm-acpi``."""
    return f"{domain_path(domid)}/hvmloader/dm-acpi"


def standard_blobs(tables: Tables) -> list[Blob]:
    """What QEMU published — the NFIT (type 0) and the NVDR body (type 1) — plus the event
    SSDT (type 0) that routes the NVDIMM GPE to NVDR.NEVT, when the tables have one."""
    blobs = [Blob("NFIT", TYPE_TABLE, tables.nfit), Blob("NVDR", TYPE_DEVICE_BODY, tables.nvdr)]
    if tables.events:
        blobs.append(Blob("NVEV", TYPE_TABLE, tables.events))
    return blobs


def device_name(name: str) -> str:
    """An entry name as hvmloader would name the Device: its first 4 characters, "_"-padded."""
    return name[:4].ljust(4, "_")


def parse_buffer_key(key: str, text: bytes) -> int:
    """A "0x..." hex value as libxl writes it. Anything else is refused: QEMU reads these keys
    as hex and hvmloader with base auto-detection, so "1000" would mean two different things."""
    value = text.decode("ascii", "replace").strip()
    if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", value):
        raise DmAcpiError("dm-acpi-bad-key", f"hvmloader/dm-acpi/{key} is {value!r}, not \"0x...\" hex")
    return int(value, 16)


def check_blob(blob: Blob) -> None:
    """Refuse what hvmloader would skip or mangle (signature/name lists, bad framing)."""
    if not _ENTRY_NAME.fullmatch(blob.name) or blob.name in BUFFER_KEYS:
        raise DmAcpiError("dm-acpi-bad-blob", f"entry name {blob.name!r} is not 1-16 of [A-Za-z0-9_]")
    if not blob.data:
        raise DmAcpiError("dm-acpi-bad-blob", f"{blob.name}: empty blob")
    if blob.type == TYPE_TABLE:
        if len(blob.data) < HEADER_SIZE:
            raise DmAcpiError("dm-acpi-bad-blob", f"{blob.name}: {len(blob.data)} bytes, shorter than a table header")
        header = TableHeader.parse(blob.data)
        if header.length != len(blob.data):
            raise DmAcpiError(
                "dm-acpi-bad-blob",
                f"{blob.name}: header length {header.length} != {len(blob.data)} bytes (hvmloader copies the header's)")
        if header.signature in SIGNATURE_BLACKLIST:
            raise DmAcpiError(
                "dm-acpi-blacklisted",
                f"{blob.name}: signature {header.signature!r} is one hvmloader builds itself and skips")
    elif blob.type == TYPE_DEVICE_BODY:
        if len(blob.name) != 4:
            raise DmAcpiError("dm-acpi-bad-blob", f"{blob.name}: a type-1 name is the Device name, 4 characters")
        try:
            AmlPath(blob.name)
        except ValueError as e:
            raise DmAcpiError("dm-acpi-bad-blob", f"{blob.name}: not an AML name ({e})") from None
        if device_name(blob.name) in DEVICE_NAME_BLACKLIST:
            raise DmAcpiError(
                "dm-acpi-blacklisted", f"{blob.name}: hvmloader's DSDT already has Device({blob.name}) and skips it")
    else:
        raise DmAcpiError("dm-acpi-bad-blob", f"{blob.name}: unknown type {blob.type} (hvmloader skips it)")


def plan(blobs: Iterable[Blob], buffer: Buffer, existing: Iterable[str] = ()) -> tuple[Entry, ...]:
    """Check ``blobs`` against hvmloader's rules and lay them out in ``buffer``.

    ``existing`` is what the dm-acpi directory lists now (address and length included); our own
    names in it are replaced, everything else counts toward hvmloader's entry limit.
    """
    blobs = list(blobs)
    names = [b.name for b in blobs]
    if len(set(names)) != len(names):
        raise DmAcpiError("dm-acpi-bad-blob", f"duplicate entry names in {names}")
    for blob in blobs:
        check_blob(blob)
    if buffer.address + buffer.length > FOUR_GIB:
        raise DmAcpiError(
            "dm-acpi-above-4g",
            f"buffer [{buffer.address:#x}, {buffer.address + buffer.length:#x}) reaches above 4 GiB; "
            "hvmloader cannot read it")
    entries, offset = [], 0
    for blob in blobs:
        entries.append(Entry(blob.name, blob.type, offset, len(blob.data)))
        offset += -(-len(blob.data) // BLOB_ALIGN) * BLOB_ALIGN
    needed = entries[-1].offset + entries[-1].length if entries else 0
    if needed > buffer.length:
        raise DmAcpiError(
            "dm-acpi-too-small",
            f"{len(entries)} blobs need {needed} bytes, the buffer has {buffer.length} "
            f"({', '.join(f'{e.name} {e.length}' for e in entries)})")
    listed = set(existing) | set(BUFFER_KEYS) | set(names)
    if len(listed) > MAX_ENTRIES:
        raise DmAcpiError(
            "dm-acpi-too-many",
            f"dm-acpi would list {len(listed)} entries (> {MAX_ENTRIES}): hvmloader would load none; "
            f"others present: {sorted(set(existing) - set(BUFFER_KEYS) - set(names))}")
    return tuple(entries)


async def read_buffer(xs: XenstoreClient | Transaction, domid: int) -> Buffer:
    """The toolstack's reservation from xenstore. Errors: DmAcpiError."""
    root = dm_acpi_path(domid)
    values = []
    for key in BUFFER_KEYS:
        try:
            values.append(parse_buffer_key(key, await xs.read(f"{root}/{key}")))
        except NoEntryError:
            raise DmAcpiError(
                "dm-acpi-missing",
                f"{root}/{key} does not exist: the toolstack reserved no dm-acpi buffer "
                "(pmemd domain create with [xen] xenstore set does)") from None
    return Buffer(*values)


async def write_blobs(hv: DeviceModelHypervisor, buffer: Buffer, blobs: list[Blob], entries: tuple[Entry, ...]) -> None:
    """Copy the blobs into guest RAM through the foreign mapping."""
    first = buffer.address // PAGE_SIZE
    last = (buffer.address + buffer.length + PAGE_SIZE - 1) // PAGE_SIZE
    try:
        view = await hv.map_foreign(first, last - first)
    except HypervisorError as e:
        raise DmAcpiError(
            "dm-acpi-not-ram",
            f"buffer [{buffer.address:#x}, {buffer.address + buffer.length:#x}) cannot be mapped: {e}") from None
    base = buffer.address - first * PAGE_SIZE
    try:
        for blob, entry in zip(blobs, entries):
            start = base + entry.offset
            view[start:start + entry.length] = blob.data
    finally:
        view.release()


async def _write_entries(tx: Transaction, domid: int, entries: tuple[Entry, ...]) -> None:
    root, perms = dm_acpi_path(domid), guest_read_only(domid)
    for entry in entries:
        node = f"{root}/{entry.name}"
        for key, value in (("type", entry.type), ("offset", entry.offset), ("length", entry.length)):
            await tx.write(f"{node}/{key}", str(value))
            await tx.set_perms(f"{node}/{key}", perms)
        await tx.set_perms(node, perms)


async def publish(xs: XenstoreClient, hv: DeviceModelHypervisor, domid: int, blobs: list[Blob]) -> Publication:
    """Check, copy into the reserved buffer, then describe in xenstore (one transaction).

    The blobs are in guest RAM before any key names them, so a reader that sees an entry sees its
    bytes. Errors: DmAcpiError (nothing written to xenstore), XenstoreError.
    """
    buffer = await read_buffer(xs, domid)
    root = dm_acpi_path(domid)
    entries = plan(blobs, buffer, await xs.directory(root))
    await write_blobs(hv, buffer, blobs, entries)

    async def describe(tx: Transaction) -> None:
        listed = await tx.directory(root)
        plan(blobs, buffer, listed)  # again, inside the transaction: others may have written
        stale = sorted(set(listed) & {b.name for b in blobs})
        if stale:
            log.warning("replacing dm-acpi entries left by an earlier run", entries=stale)
            for name in stale:
                await tx.rm(f"{root}/{name}")
        await _write_entries(tx, domid, entries)

    await xs.run_transaction(describe)
    publication = Publication(buffer, entries)
    log.info("dm-acpi published", domid=domid, path=root, address=hex(buffer.address), length=buffer.length,
             entries=[e.as_dict() for e in entries])
    return publication


async def unpublish(xs: XenstoreClient, domid: int, publication: Publication) -> None:
    """Remove our entries (the toolstack's address/length stay). Tolerates a vanished tree."""
    root = dm_acpi_path(domid)
    for entry in publication.entries:
        try:
            await xs.rm(f"{root}/{entry.name}")
        except NoEntryError:
            pass
