"""The simulated hvmloader: the guest firmware's dm-acpi loading rules (reference §2.5).

When a simulated domain is first unpaused (its boot), :class:`Hvmloader` does what the vNVDIMM
series' hvmloader did -- read as the guest, from xenstore and guest RAM:

- only if both ``hvmloader/dm-acpi/address`` and ``length`` exist; numbers parse with base
  auto-detection (``0x`` hex, leading ``0`` octal, else decimal), as ``strtoll(s, NULL, 0)``;
- list the ``dm-acpi`` directory (``address``/``length`` are listed too and skipped: no
  ``type``) and give up on *every* entry if it lists more than 16 (ACPI_MAX_SECONDARY_TABLES)
  less the secondary tables already built;
- type 0: skip a blacklisted signature or a header length of 0 or above the blob's; copy
  ``header.length`` bytes and recompute the checksum;
- type 1: skip a name colliding with hvmloader's devices (or one loaded earlier); wrap the blob
  as ``Scope(\\_SB){Device(NAME){blob}}`` in a new SSDT, revision 2, OEM "Xen"/"HVM", creator
  "HVML";
- anything else, and entries that point outside the buffer: skip.

Every skip is logged (the real one was silent). The tables built are kept per domain
(:attr:`Hvmloader.results`) and, with an output directory, written as
``<dir>/dom<D>/<NAME>.dat`` (raw tables, for ``iasl -d``) plus ``hvmloader.json`` saying what was
loaded and skipped. :func:`attach` wires it, and xenstored's ``@releaseDomain``, to the simulator.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from pmemd.sim.hv_domain import Domain
from pmemd.sim.hv_ssdt import HEADER_SIZE, device_ssdt, table_header, with_checksum
from pmemd.sim.hypervisor import Hypervisor
from pmemd.xenstore.errors import XenstoreError
from pmemd.xenstored.store import Store

log = structlog.get_logger("pmemd.sim.hvmloader")

# hvmloader's rules for dm-acpi entries, from the vNVDIMM series (reference §2.5); the daemon's
# `pmemd.daemon.dmacpi` keeps its own copy on purpose, so a wrong one on either side fails a test.
TYPE_TABLE = 0  # a complete ACPI table
TYPE_DEVICE_BODY = 1  # the body of a Device under \_SB
ACPI_MAX_SECONDARY_TABLES = 16
# The tables hvmloader builds itself, by the signature in their headers (the RSDP's first four
# bytes are "RSD "; FADT's signature is FACP, MADT's APIC). SSDT is not here: it may repeat.
BUILT_SIGNATURES = frozenset(
    {"RSD ", "FACS", "FACP", "DSDT", "APIC", "HPET", "WAET", "TCPA", "SRAT", "SLIT", "RSDT", "XSDT"})
# Devices hvmloader's DSDT declares under \_SB, as AML NameSegs.
BUILT_DEVICES = frozenset({"MEM0", "PCI0", "AC__", "BAT0", "BAT1", "TPM_"})
BUFFER_LEAVES = ("address", "length")  # listed with the entries, skipped for lacking a type
_STRTOLL = re.compile(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*")

ReadMemory = Callable[[int, int], bytes]


@dataclass(frozen=True)
class LoadedTable:
    entry: str  # the dm-acpi entry it came from
    type: int
    signature: str
    data: bytes


@dataclass(frozen=True)
class Skip:
    entry: str
    reason: str


@dataclass
class HvmloaderResult:
    """What one boot's dm-acpi pass did."""

    domid: int
    has_dm_acpi: bool = False  # address and length both present (hvmloader's ACPI_HAS_DM)
    gave_up: str | None = None  # why nothing was loaded, when the pass gave up entirely
    tables: list[LoadedTable] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "domid": self.domid,
            "has_dm_acpi": self.has_dm_acpi,
            "gave_up": self.gave_up,
            "loaded": [{"entry": t.entry, "type": t.type, "signature": t.signature, "length": len(t.data),
                        "file": f"{t.entry}.dat"} for t in self.tables],
            "skipped": [asdict(s) for s in self.skipped],
        }


def strtoll(text: str) -> int | None:
    """``strtoll(s, NULL, 0)`` for a whole value; None when it is not a number."""
    match = _STRTOLL.fullmatch(text)
    if match is None:
        return None
    digits = match.group(1)
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    return int(digits, 8) if digits.startswith("0") else int(digits)


def _read(store: Store, path: str, domid: int) -> str | None:
    """hvmloader's xenstore_read: the value, or None on any error."""
    try:
        return store.read(path, as_domid=domid).decode("ascii", "replace")
    except XenstoreError:
        return None


def _number(store: Store, path: str, domid: int) -> int | None:
    text = _read(store, path, domid)
    return None if text is None else strtoll(text)


def load_dm_acpi(store: Store, domid: int, read_memory: ReadMemory, *, secondary_tables_built: int = 0) -> HvmloaderResult:
    """Run hvmloader's dm-acpi pass for ``domid`` (module docstring); reads as the guest."""
    result = HvmloaderResult(domid)
    root = f"/local/domain/{domid}/hvmloader/dm-acpi"
    address = _number(store, f"{root}/address", domid)
    length = _number(store, f"{root}/length", domid)
    if address is None or length is None:
        result.gave_up = "no dm-acpi address/length"
        return result
    result.has_dm_acpi = True
    try:
        names = store.directory(root, as_domid=domid)
    except XenstoreError as e:
        result.gave_up = f"cannot list {root}: {e}"
        return result
    limit = ACPI_MAX_SECONDARY_TABLES - secondary_tables_built
    if len(names) > limit:
        result.gave_up = f"{len(names)} dm-acpi entries > {limit} free secondary table slots"
        return result
    devices = set(BUILT_DEVICES)
    for name in names:
        skip = _load_entry(store, domid, root, name, address, length, read_memory, devices, result)
        if skip is not None:
            result.skipped.append(Skip(name, skip))
    return result


def _load_entry(store: Store, domid: int, root: str, name: str, address: int, length: int,
                read_memory: ReadMemory, devices: set[str], result: HvmloaderResult) -> str | None:
    """Load one entry into ``result``; return why it was skipped, or None."""
    kind = _number(store, f"{root}/{name}/type", domid)
    if kind is None:
        return None if name in BUFFER_LEAVES else "no type"
    offset = _number(store, f"{root}/{name}/offset", domid)
    size = _number(store, f"{root}/{name}/length", domid)
    if offset is None or size is None:
        return "no offset or length"
    if size == 0 or offset + size > length:
        return f"blob [{offset}, {offset + size}) outside the {length}-byte buffer"
    blob = read_memory(address + offset, size)
    if kind == TYPE_TABLE:
        if size < HEADER_SIZE:
            return f"{size} bytes, shorter than a table header"
        signature, table_length = table_header(blob)
        if signature in BUILT_SIGNATURES:
            return f"signature {signature} is on the blacklist"
        if table_length == 0 or table_length > size:
            return f"header length {table_length} is 0 or above the blob's {size}"
        result.tables.append(LoadedTable(name, kind, signature, with_checksum(blob[:table_length])))
        return None
    if kind == TYPE_DEVICE_BODY:
        device = name[:4].ljust(4, "_")  # the entry's first four characters name the Device
        if device in devices:
            return f"device name {device} collides"
        try:
            table = device_ssdt(device, blob)
        except ValueError as e:
            return f"device name {device!r} is not an AML name: {e}"
        devices.add(device)
        result.tables.append(LoadedTable(name, kind, "SSDT", table))
        return None
    return f"unknown type {kind}"


def write_tables(out_dir: Path, result: HvmloaderResult) -> Path:
    """``<out_dir>/dom<D>/<NAME>.dat`` per loaded table and ``hvmloader.json``; returns the dir."""
    target = out_dir / f"dom{result.domid}"
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.dat"):
        stale.unlink()
    for table in result.tables:
        (target / f"{table.entry}.dat").write_bytes(table.data)
    summary = target / "hvmloader.json"
    tmp = summary.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.summary(), indent=2) + "\n")
    os.replace(tmp, summary)  # last: its presence means the tables are complete
    return target


class Hvmloader:
    """hvmloader for every simulated domain: runs once per boot, keeps and writes the results."""

    def __init__(self, store: Store, out_dir: Path | None = None, *, secondary_tables_built: int = 0) -> None:
        self.store = store
        self.out_dir = out_dir
        self.secondary_tables_built = secondary_tables_built
        self.results: dict[int, HvmloaderResult] = {}

    def boot(self, dom: Domain) -> HvmloaderResult:
        """The guest's first instructions: load the dm-acpi blobs from xenstore and RAM."""
        result = load_dm_acpi(self.store, dom.domid, dom.ram.read,
                              secondary_tables_built=self.secondary_tables_built)
        self.results[dom.domid] = result
        dlog = log.bind(domid=dom.domid)
        for skip in result.skipped:
            dlog.warning("dm-acpi entry skipped", entry=skip.entry, reason=skip.reason)
        if result.gave_up:
            (dlog.warning if result.has_dm_acpi else dlog.info)("dm-acpi not loaded", reason=result.gave_up)
        for table in result.tables:
            dlog.info("dm-acpi table loaded", entry=table.entry, type=table.type, signature=table.signature,
                      length=len(table.data))
        if self.out_dir is not None:
            write_tables(self.out_dir, result)
        return result

    def on_unpause(self, dom: Domain) -> None:
        if dom.domid in self.results:
            return  # hvmloader runs once, at boot; later unpauses resume a running guest
        try:
            self.boot(dom)
        except Exception:
            log.exception("simulated hvmloader failed", domid=dom.domid)

    def on_destroy(self, dom: Domain) -> None:
        self.results.pop(dom.domid, None)


def attach(hv: Hypervisor, store: Store, out_dir: Path | None = None) -> Hvmloader:
    """Run hvmloader at each domain's first unpause; fire ``@releaseDomain`` when one is destroyed
    (xenstored does on VIRQ_DOM_EXC)."""
    hvmloader = Hvmloader(store, out_dir)
    hv.on_unpause.append(hvmloader.on_unpause)
    hv.on_destroy.append(hvmloader.on_destroy)
    hv.on_destroy.append(lambda dom: store.release_domain(dom.domid))
    return hvmloader
