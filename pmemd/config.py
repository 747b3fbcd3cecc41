"""Guest configuration: a TOML file, validated into frozen dataclasses.

Every rule failure raises `ConfigError` naming the field (as a dotted path, e.g.
`nvdimm[1].label_size`) and the rule, so an operator can fix the file from one line.
Validation is hand-written rather than delegated to a schema library: the rules are
cross-field (overlaps, alignment, placement) and a validator package would add
~150 ms of import time to a daemon the toolstack starts per guest.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from acpi.dsm_buffer import DEFAULT_NOTIFY_PORT, NOTIFY_WIDTH, PAGE_SIZE
from acpi.layout import DIMM_FAMILIES, MEMDEV_FLAG_NAMES, MEMDEV_MAP_FAILED

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
FOUR_GIB = 4 * GiB

MIN_LABEL_SIZE = 128 * KiB
PMEM_ALIGN = 2 * MiB
AUTO_ALIGN = GiB  # libxl/QEMU place hotplug memory on 1 GiB boundaries
MAX_SLOTS = 256  # NVxx names carry the slot in two hex digits
MAX_GPA = 1 << 48  # guest physical address width we accept
DOMID_FIRST_RESERVED = 0x7FF0
MAX_VCPUS = 128  # one ioreq slot per vCPU in the shared page
PLATFORM_RESERVED_START = 0xFC000000  # hvmloader's special pages, LAPIC, IOAPIC, HPET
DEFAULT_MMIO_HOLE = 256 * MiB
DEFAULT_MMIO_DSM_PAGE = PLATFORM_RESERVED_START - PAGE_SIZE

DEFAULT_SCRUB_RATE = GiB  # bytes/s: a 16 GiB DIMM scrubs in 16 s
MAX_SCRUB_RATE = 1 << 50

DsmMode = Literal["mmio", "ram"]
Transport = Literal["xen", "qemu"]
DEFAULT_DOORBELL_TIMEOUT_MS = 4000  # the AML's bound on waiting for a qemu-transport reply
Persistence = Literal["cpu", "mem-ctrl"]
PmemMode = Literal["none", "direct", "mirrored"]
DEFAULT_WRITEBACK_INTERVAL = 30.0  # seconds between mirrored write-backs besides flushes


class ConfigError(ValueError):
    """A configuration value breaks a rule; the message names the field."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"{field_name}: {rule}")
        self.field = field_name
        self.rule = rule


@dataclass(frozen=True)
class GuestConfig:
    """The guest's memory map: RAM below 4 GiB, the MMIO hole, RAM above 4 GiB."""

    lowmem: int
    highmem: int
    vcpus: int
    mmio_hole: int

    @property
    def mmio_hole_start(self) -> int:
        return FOUR_GIB - self.mmio_hole

    @property
    def highmem_end(self) -> int:
        return FOUR_GIB + self.highmem

    def ram_ranges(self) -> list[tuple[int, int]]:
        """RAM as [start, end) ranges."""
        ranges = [(0, self.lowmem)]
        if self.highmem:
            ranges.append((FOUR_GIB, self.highmem_end))
        return ranges


@dataclass(frozen=True)
class DsmConfig:
    mode: DsmMode
    page: int
    notify_port: int
    transport: Transport = "xen"
    doorbell: Path | None = None  # qemu: Unix socket QEMU's isa-debugcon chardev connects to
    ram: Path | None = None  # qemu: the guest-RAM file (file offset == GPA below 4 GiB)
    timeout_ms: int = DEFAULT_DOORBELL_TIMEOUT_MS  # qemu: the AML's wait bound per call
    scrub_rate: int = DEFAULT_SCRUB_RATE  # ARS scrub speed, bytes/s (tests set it fast)
    state_file: Path | None = None  # health and poison across restarts; None: beside nvdimm[0]'s backing


@dataclass(frozen=True)
class XenConfig:
    hypervisor: str  # socket path of the (simulated) hypervisor, or "embedded"
    xenstore: str  # socket path of xenstored, or "embedded"
    dm_acpi_size: int | None = None  # toolstack's dm-acpi buffer (bytes); None: sized to the tables


@dataclass(frozen=True)
class HostConfig:
    """The host pmem under the backing files (`[host]`); SPA bytes, ranges [start, end).

    `spa_base` is the host physical address of byte 0 of the backing filesystem's block
    device (FIEMAP offsets are relative to it); None means: find it through sysfs (real
    pmem). `data` is the guest-mappable area (None: the whole device); `reserved` is the
    reserved/management area, never mapped ((0, 0): none).
    """

    spa_base: int | None
    data: tuple[int, int] | None
    reserved: tuple[int, int]


@dataclass(frozen=True)
class NvdimmConfig:
    """One virtual NVDIMM backed by a file; labels live in its last `label_size` bytes."""

    backing: Path
    size: int
    label_size: int
    slot: int
    node: int
    unarmed: bool
    address: int
    flush_hint: int | None
    serial: int
    family: str = "intel"  # the `_DSM` family (acpi.layout.DIMM_FAMILIES)
    flags: tuple[str, ...] = ()  # NFIT memdev flags by name (acpi.layout.MEMDEV_FLAG_NAMES)

    @property
    def memdev_flags(self) -> int:
        """The configured `flags` as NFIT memdev bits (`unarmed` and health-enabled not included)."""
        bits = 0
        for name in self.flags:
            bits |= MEMDEV_FLAG_NAMES[name]
        return bits

    @property
    def map_failed(self) -> bool:
        """Configured "map-failed": the guest gets no SPA range for it, nothing is mapped."""
        return bool(self.memdev_flags & MEMDEV_MAP_FAILED)

    @property
    def pmem_size(self) -> int:
        """Guest-visible persistent memory: the backing file less its label area."""
        return self.size - self.label_size

    @property
    def end(self) -> int:
        return self.address + self.pmem_size


@dataclass(frozen=True)
class PmemConfig:
    """How guest PMEM reaches the backing files (`[pmem]`).

    `none`: not mapped (ACPI and `_DSM` only); `direct`: the file's host pmem frames are mapped
    (XENMEM_populate_pmem_map, the RFC series; needs `[host]`); `mirrored`: pmemd populates
    ordinary guest frames, fills them from the file and writes changes back on every flush-hint
    write, at shutdown and every `writeback_interval` seconds (upstream Xen).
    """

    mode: PmemMode
    writeback_interval: float = DEFAULT_WRITEBACK_INTERVAL


@dataclass(frozen=True)
class Config:
    domid: int
    guest: GuestConfig
    dsm: DsmConfig
    xen: XenConfig
    qmp_socket: Path
    persistence: Persistence | None
    nvdimms: tuple[NvdimmConfig, ...] = field(default_factory=tuple)
    source: Path | None = None
    host: HostConfig | None = None  # None: no [host] section, guest PMEM is not mapped
    pmem: PmemConfig = field(default_factory=lambda: PmemConfig("none"))  # [pmem]



_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


def parse_size(value: Any, field_name: str) -> int:
    """A byte count from an integer or a string such as "128K", "2M", "1GiB"."""
    if isinstance(value, bool):
        raise ConfigError(field_name, f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(field_name, f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(match.group(1)) * _UNITS[match.group(2).upper()]
    raise ConfigError(field_name, f"expected a size such as 4096, \"128K\" or \"1G\", got {value!r}")


def parse_int(value: Any, field_name: str, lo: int, hi: int) -> int:
    """An integer (or a "0x..." string) within [lo, hi]."""
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise ConfigError(field_name, f"expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field_name, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(field_name, f"must be between {lo:#x} and {hi:#x}, got {value:#x}")
    return value


def load(path: str | Path, *, domid: int | None = None) -> Config:
    """Read and validate a guest config file; `domid` overrides the file's value."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    if domid is not None:
        raw = {**raw, "domid": domid}
    return from_mapping(raw, base_dir=path.parent, source=path)


def from_mapping(raw: Mapping[str, Any], *, base_dir: Path = Path("."), source: Path | None = None) -> Config:
    """Validate a parsed config (the TOML document as a mapping)."""
    _reject_unknown(raw, {"domid", "guest", "dsm", "xen", "qmp", "platform", "nvdimm", "host", "pmem"}, "")
    if "domid" not in raw:
        raise ConfigError("domid", "is required")
    domid = parse_int(raw["domid"], "domid", 1, DOMID_FIRST_RESERVED - 1)
    guest = _guest(_table(raw, "guest"))
    dsm = _dsm(_table(raw, "dsm"), guest, base_dir)
    dsm = _dsm_media(_table(raw, "dsm"), dsm, base_dir)
    xen = _xen(_table(raw, "xen"))
    qmp = _table(raw, "qmp")
    _reject_unknown(qmp, {"socket"}, "qmp")
    qmp_socket = qmp.get("socket", f"/var/run/xen/qmp-pmemd-{domid}")
    if not isinstance(qmp_socket, str) or not qmp_socket:
        raise ConfigError("qmp.socket", f"must be a socket path, got {qmp_socket!r}")
    platform = _table(raw, "platform")
    _reject_unknown(platform, {"persistence"}, "platform")
    persistence = platform.get("persistence")
    if persistence not in (None, "cpu", "mem-ctrl"):
        raise ConfigError("platform.persistence", f"must be \"cpu\" or \"mem-ctrl\", got {persistence!r}")
    entries = raw.get("nvdimm", [])
    if not isinstance(entries, list):
        raise ConfigError("nvdimm", "must be an array of tables ([[nvdimm]])")
    nvdimms = _place_nvdimms([_nvdimm(e, i, base_dir) for i, e in enumerate(entries)], guest)
    _check_nvdimm_overlaps(nvdimms, guest, dsm)
    _check_intel_dimm_last(nvdimms)
    host = _host(_table(raw, "host")) if "host" in raw else None
    pmem = _pmem(_table(raw, "pmem"), host, nvdimms)
    return Config(domid, guest, dsm, xen, Path(qmp_socket), persistence, tuple(nvdimms), source, host, pmem)


def _pmem(t: Mapping[str, Any], host: HostConfig | None, nvdimms: list[NvdimmConfig]) -> PmemConfig:
    _reject_unknown(t, {"mode", "writeback_interval"}, "pmem")
    mode = t.get("mode", "none" if host is None else "direct")
    if mode not in ("none", "direct", "mirrored"):
        raise ConfigError("pmem.mode", f"must be \"none\", \"direct\" or \"mirrored\", got {mode!r}")
    if mode == "direct" and host is None:
        raise ConfigError("pmem.mode", "\"direct\" maps host pmem frames and needs a [host] section")
    if mode == "mirrored":
        for i, d in enumerate(nvdimms):
            if d.flush_hint is None:
                raise ConfigError(f"nvdimm[{i}].flush_hint", "is required with pmem.mode = \"mirrored\": "
                                  "a guest flush-hint write is what makes its data durable")
    interval = t.get("writeback_interval", DEFAULT_WRITEBACK_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.1 <= interval <= 86400:
        raise ConfigError("pmem.writeback_interval", f"must be seconds between 0.1 and 86400, got {interval!r}")
    return PmemConfig(mode, float(interval))


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(name, "must be a table")
    return value


def _reject_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            name = f"{prefix}.{key}" if prefix else key
            raise ConfigError(name, f"unknown field (known: {', '.join(sorted(known))})")


def _guest(t: Mapping[str, Any]) -> GuestConfig:
    _reject_unknown(t, {"lowmem", "highmem", "vcpus", "mmio_hole"}, "guest")
    mmio_hole = parse_size(t.get("mmio_hole", DEFAULT_MMIO_HOLE), "guest.mmio_hole")
    if mmio_hole % (256 * MiB) or not 256 * MiB <= mmio_hole <= 3 * GiB:
        raise ConfigError("guest.mmio_hole", "must be a multiple of 256 MiB between 256M and 3G")
    lowmem = parse_size(t.get("lowmem", "1G"), "guest.lowmem")
    if lowmem % PAGE_SIZE or lowmem < 16 * MiB:
        raise ConfigError("guest.lowmem", "must be at least 16 MiB and a multiple of 4 KiB")
    if lowmem > FOUR_GIB - mmio_hole:
        raise ConfigError("guest.lowmem", f"must end below the MMIO hole at {FOUR_GIB - mmio_hole:#x}")
    highmem = parse_size(t.get("highmem", 0), "guest.highmem")
    if highmem % PAGE_SIZE or highmem > MAX_GPA // 2:
        raise ConfigError("guest.highmem", "must be a multiple of 4 KiB and below 128 TiB")
    vcpus = parse_int(t.get("vcpus", 1), "guest.vcpus", 1, MAX_VCPUS)
    return GuestConfig(lowmem, highmem, vcpus, mmio_hole)


def _dsm(t: Mapping[str, Any], guest: GuestConfig, base_dir: Path = Path(".")) -> DsmConfig:
    _reject_unknown(t, {"mode", "page", "notify_port", "transport", "doorbell", "ram", "timeout_ms",
                        "scrub_rate", "state_file"}, "dsm")
    transport = t.get("transport", "xen")
    if transport not in ("xen", "qemu"):
        raise ConfigError("dsm.transport", f"must be \"xen\" or \"qemu\", got {transport!r}")
    if transport == "qemu":
        return _qemu_dsm(t, guest, base_dir)
    for key in ("doorbell", "ram", "timeout_ms"):
        if key in t:
            raise ConfigError(f"dsm.{key}", "applies only to transport = \"qemu\"")
    mode = t.get("mode", "mmio")
    if mode not in ("mmio", "ram"):
        raise ConfigError("dsm.mode", f"must be \"mmio\" or \"ram\", got {mode!r}")
    default_page = DEFAULT_MMIO_DSM_PAGE if mode == "mmio" else guest.lowmem - PAGE_SIZE
    page = parse_int(t.get("page", default_page), "dsm.page", 0, FOUR_GIB - PAGE_SIZE)
    if page % PAGE_SIZE:
        raise ConfigError("dsm.page", f"must be 4 KiB aligned, got {page:#x}")
    if mode == "mmio" and not guest.mmio_hole_start <= page < PLATFORM_RESERVED_START:
        raise ConfigError(
            "dsm.page",
            f"in mmio mode must lie in the MMIO hole [{guest.mmio_hole_start:#x}, "
            f"{PLATFORM_RESERVED_START:#x}), got {page:#x}",
        )
    in_hole = guest.mmio_hole_start <= page < PLATFORM_RESERVED_START
    if mode == "ram" and not (page + PAGE_SIZE <= guest.lowmem or in_hole):
        raise ConfigError("dsm.page", f"in ram mode must lie in guest RAM below {guest.lowmem:#x} or in the MMIO "
                                      f"hole [{guest.mmio_hole_start:#x}, {PLATFORM_RESERVED_START:#x}) "
                                      f"(pmemd populates it there), got {page:#x}")
    port = parse_int(t.get("notify_port", DEFAULT_NOTIFY_PORT), "dsm.notify_port", 0, 0xFFFF - NOTIFY_WIDTH + 1)
    if port % NOTIFY_WIDTH:
        raise ConfigError("dsm.notify_port", f"must be {NOTIFY_WIDTH}-byte aligned, got {port:#x}")
    return DsmConfig(mode, page, port)


def _qemu_dsm(t: Mapping[str, Any], guest: GuestConfig, base_dir: Path) -> DsmConfig:
    """The QEMU front end: the page lives in shared guest RAM, a completion page beside it."""
    if t.get("mode", "ram") != "ram":
        raise ConfigError("dsm.mode", f"transport \"qemu\" needs mode \"ram\", got {t['mode']!r}")
    page = parse_int(t.get("page", guest.lowmem // 2), "dsm.page", 0, FOUR_GIB - 2 * PAGE_SIZE)
    if page % PAGE_SIZE:
        raise ConfigError("dsm.page", f"must be 4 KiB aligned, got {page:#x}")
    if page + 2 * PAGE_SIZE > guest.lowmem:
        raise ConfigError("dsm.page", f"with transport \"qemu\" the page and its completion page must lie "
                                      f"in guest RAM below {guest.lowmem:#x}, got {page:#x}")
    port = parse_int(t.get("notify_port", DEFAULT_NOTIFY_PORT), "dsm.notify_port", 0, 0xFFFF)
    paths = {}
    for key in ("doorbell", "ram"):
        value = t.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"dsm.{key}", "is required with transport \"qemu\": a file path")
        path = Path(value)
        paths[key] = path if path.is_absolute() else base_dir / path
    timeout = parse_int(t.get("timeout_ms", DEFAULT_DOORBELL_TIMEOUT_MS), "dsm.timeout_ms", 1, 60_000)
    return DsmConfig("ram", page, port, "qemu", paths["doorbell"], paths["ram"], timeout)


def _dsm_media(t: Mapping[str, Any], dsm: DsmConfig, base_dir: Path) -> DsmConfig:
    """ARS scrub rate and the state file (media errors and health), for either transport."""
    rate = parse_size(t.get("scrub_rate", DEFAULT_SCRUB_RATE), "dsm.scrub_rate")
    if not 1 <= rate <= MAX_SCRUB_RATE:
        raise ConfigError("dsm.scrub_rate", f"must be between 1 and {MAX_SCRUB_RATE} bytes/s, got {rate}")
    state_file = t.get("state_file")
    if state_file is not None and (not isinstance(state_file, str) or not state_file):
        raise ConfigError("dsm.state_file", f"must be a file path, got {state_file!r}")
    path = None if state_file is None else Path(state_file)
    if path is not None and not path.is_absolute():
        path = base_dir / path
    return replace(dsm, scrub_rate=rate, state_file=path)


def _xen(t: Mapping[str, Any]) -> XenConfig:
    _reject_unknown(t, {"hypervisor", "xenstore", "dm_acpi_size"}, "xen")
    values: dict[str, Any] = {}
    for key in ("hypervisor", "xenstore"):
        value = t.get(key, "embedded")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"xen.{key}", f"must be a socket path or \"embedded\", got {value!r}")
        values[key] = value
    size = t.get("dm_acpi_size", "auto")
    if size != "auto":
        size = parse_size(size, "xen.dm_acpi_size")
        if not size or size % PAGE_SIZE:
            raise ConfigError("xen.dm_acpi_size", f"must be \"auto\" or a positive multiple of 4 KiB, got {size}")
        values["dm_acpi_size"] = size
    return XenConfig(**values)


def _host(t: Mapping[str, Any]) -> HostConfig:
    _reject_unknown(t, {"spa_base", "data", "reserved"}, "host")
    raw_base = t.get("spa_base", "discover")
    spa_base = None if raw_base == "discover" else _host_address(raw_base, "host.spa_base")
    data = _host_range(t["data"], "host.data") if "data" in t else None
    if data is not None and spa_base is None:
        raise ConfigError("host.data", "needs an explicit host.spa_base (discovery finds the data area itself)")
    if data is not None and data[0] >= data[1]:
        raise ConfigError("host.data", f"[{data[0]:#x}, {data[1]:#x}) is empty")
    reserved = _host_range(t["reserved"], "host.reserved") if "reserved" in t else (0, 0)
    if reserved[0] > reserved[1]:
        raise ConfigError("host.reserved", f"[{reserved[0]:#x}, {reserved[1]:#x}) ends before it starts")
    return HostConfig(spa_base, data, reserved)


def _host_address(value: Any, field_name: str) -> int:
    """A host physical address: an integer or "0x..." string, 4 KiB aligned, below 2^52."""
    address = parse_int(value, field_name, 0, (1 << 52) - 1)
    if address % PAGE_SIZE:
        raise ConfigError(field_name, f"must be 4 KiB aligned, got {address:#x}")
    return address


def _host_range(value: Any, field_name: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(field_name, f"must be [start, end] in host physical bytes, got {value!r}")
    return _host_address(value[0], field_name), _host_address(value[1], field_name)


_NVDIMM_FIELDS = {
    "backing", "size", "label_size", "slot", "node", "unarmed", "address", "flush_hint", "serial", "family",
    "flags",
}


def _nvdimm(t: Any, index: int, base_dir: Path) -> NvdimmConfig:
    name = f"nvdimm[{index}]"
    if not isinstance(t, Mapping):
        raise ConfigError(name, "must be a table")
    _reject_unknown(t, _NVDIMM_FIELDS, name)
    backing = t.get("backing")
    if not isinstance(backing, str) or not backing:
        raise ConfigError(f"{name}.backing", "is required: the path of the backing file")
    if "size" not in t:
        raise ConfigError(f"{name}.size", "is required: the backing file's size, labels included")
    size = parse_size(t["size"], f"{name}.size")
    label_size = parse_size(t.get("label_size", 0), f"{name}.label_size")
    if label_size and label_size < MIN_LABEL_SIZE:
        raise ConfigError(f"{name}.label_size", f"must be 0 or at least 128 KiB, got {label_size}")
    if label_size % PAGE_SIZE:
        raise ConfigError(f"{name}.label_size", f"must be a multiple of 4 KiB, got {label_size}")
    pmem = size - label_size
    if pmem <= 0:
        raise ConfigError(f"{name}.size", f"must exceed label_size ({label_size}) to leave guest PMEM")
    if pmem % PMEM_ALIGN:
        raise ConfigError(
            f"{name}.size",
            f"size - label_size ({pmem:#x}) is the guest PMEM and must be a multiple of 2 MiB",
        )
    slot = parse_int(t.get("slot", index), f"{name}.slot", 0, MAX_SLOTS - 1)
    node = parse_int(t.get("node", 0), f"{name}.node", 0, 0xFFFFFFFF)
    unarmed = t.get("unarmed", False)
    if not isinstance(unarmed, bool):
        raise ConfigError(f"{name}.unarmed", f"must be true or false, got {unarmed!r}")
    address_raw = t.get("address", "auto")
    address = -1 if address_raw == "auto" else parse_int(address_raw, f"{name}.address", 0, MAX_GPA - 1)
    if address >= 0 and address % PMEM_ALIGN:
        raise ConfigError(f"{name}.address", f"must be 2 MiB aligned, got {address:#x}")
    flush_hint = None
    if "flush_hint" in t:
        flush_hint = parse_int(t["flush_hint"], f"{name}.flush_hint", 0, FOUR_GIB - 8)
        if flush_hint % 8:
            raise ConfigError(f"{name}.flush_hint", f"must be 8-byte aligned, got {flush_hint:#x}")
    serial = parse_int(t.get("serial", 0x504D0000 + slot), f"{name}.serial", 0, 0xFFFFFFFF)
    family = t.get("family", "intel")
    if not isinstance(family, str) or family not in DIMM_FAMILIES:
        raise ConfigError(f"{name}.family", f"must be one of {', '.join(DIMM_FAMILIES)}, got {family!r}")
    flags = _memdev_flags(t.get("flags", []), f"{name}.flags")
    path = Path(backing)
    if not path.is_absolute():
        path = base_dir / path
    return NvdimmConfig(path, size, label_size, slot, node, unarmed, address, flush_hint, serial, family, flags)


def _memdev_flags(value: Any, field_name: str) -> tuple[str, ...]:
    """`flags = ["save-fail", ...]`: known names, each at most once, in the order given."""
    known = ", ".join(MEMDEV_FLAG_NAMES)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(field_name, f"must be a list of flag names ({known}), got {value!r}")
    for v in value:
        if v not in MEMDEV_FLAG_NAMES:
            raise ConfigError(field_name, f"unknown flag {v!r} (known: {known})")
    if len(set(value)) != len(value):
        raise ConfigError(field_name, f"lists a flag twice: {value!r}")
    return tuple(value)


def _place_nvdimms(nvdimms: list[NvdimmConfig], guest: GuestConfig) -> list[NvdimmConfig]:
    """Give `address = "auto"` DIMMs a base: above high RAM and fixed DIMMs, 1 GiB aligned."""
    seen: dict[int, int] = {}
    serials: dict[int, int] = {}
    for i, d in enumerate(nvdimms):
        if d.slot in seen:
            raise ConfigError(f"nvdimm[{i}].slot", f"slot {d.slot} is already used by nvdimm[{seen[d.slot]}]")
        seen[d.slot] = i
        if d.serial in serials:  # Linux names DIMMs (nmem ids, label cookies) after the serial
            raise ConfigError(
                f"nvdimm[{i}].serial", f"serial {d.serial:#x} is already used by nvdimm[{serials[d.serial]}]")
        serials[d.serial] = i
    cursor = max([guest.highmem_end] + [d.end for d in nvdimms if d.address >= 0])
    placed = []
    for d in sorted(nvdimms, key=lambda d: d.slot):
        if d.address < 0:
            base = -(-cursor // AUTO_ALIGN) * AUTO_ALIGN
            d = replace(d, address=base)
            cursor = d.end
        placed.append(d)
    order = {d.slot: i for i, d in enumerate(nvdimms)}
    return sorted(placed, key=lambda d: order[d.slot])


def _check_intel_dimm_last(nvdimms: list[NvdimmConfig]) -> None:
    """With any Intel-family DIMM, the highest slot (handle) must hold one.

    Linux (5.9+, `acpi_nfit_add_dimm`) registers DIMMs in handle order and, for each one,
    clears the Intel family from the bus-wide `dimm_family_mask` before setting the
    families that DIMM answers; a non-Intel DIMM registered last thus drops Intel for the
    whole bus, and every Intel `ND_CMD_CALL` (ndctl's SMART, health, inject-smart) on any
    DIMM fails with EINVAL in `__nd_ioctl`.
    """
    if not any(d.family == "intel" for d in nvdimms):
        return
    index, last = max(enumerate(nvdimms), key=lambda e: e[1].slot)
    if last.family != "intel":
        raise ConfigError(
            f"nvdimm[{index}].slot",
            f"slot {last.slot} is the highest, so Linux registers this {last.family}-family DIMM last and "
            "drops the Intel _DSM family from the whole bus (ndctl SMART/health calls on the Intel DIMMs "
            "fail with EINVAL): give an Intel-family DIMM the highest slot",
        )


def _check_nvdimm_overlaps(nvdimms: list[NvdimmConfig], guest: GuestConfig, dsm: DsmConfig) -> None:
    taken: list[tuple[int, int, str]] = [(s, e, "guest RAM") for s, e in guest.ram_ranges()]
    taken.append((guest.mmio_hole_start, FOUR_GIB, "the MMIO hole"))
    for i, d in enumerate(nvdimms):
        name = f"nvdimm[{i}]"
        if d.end > MAX_GPA:
            raise ConfigError(f"{name}.address", f"range ends at {d.end:#x}, beyond the {MAX_GPA:#x} limit")
        for start, end, what in taken:
            if d.address < end and start < d.end:
                raise ConfigError(
                    f"{name}.address",
                    f"range [{d.address:#x}, {d.end:#x}) overlaps {what} [{start:#x}, {end:#x})",
                )
        if d.address <= dsm.page < d.end:
            raise ConfigError("dsm.page", f"{dsm.page:#x} lies inside {name}'s range")
        if d.flush_hint is not None:
            if not guest.mmio_hole_start <= d.flush_hint < PLATFORM_RESERVED_START:
                raise ConfigError(f"{name}.flush_hint", "must lie in the MMIO hole, below the platform devices")
            if dsm.page <= d.flush_hint < dsm.page + PAGE_SIZE:
                raise ConfigError(f"{name}.flush_hint", "must not lie in the DSM page")
            for j, other in enumerate(nvdimms[:i]):
                if other.flush_hint == d.flush_hint:
                    raise ConfigError(f"{name}.flush_hint", f"is already used by nvdimm[{j}]")
        taken.append((d.address, d.end, name))
