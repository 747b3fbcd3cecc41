"""`pmemd lab --xen`: Xen 4.17 nested in QEMU TCG, dom0 running pmemd, an HVM Linux guest.

One run boots QEMU once (`-cpu qemu64,+svm,+npt`: Xen finds SVM + HAP), Xen with a PV dom0
whose root is this machine's `/` (read-only virtio-9p) and whose work directory and backing
file directories are shared read-write at their own paths; dom0 starts xenstored,
xenconsoled and `pmemd.lab.dom0`, which runs every guest boot of the plan with pmemd as the
NVDIMM device model (the README's operator workflow), then powers off.

The guest config is the one `pmemd lab` takes; this module sets what the nested host needs:
`[xen] hypervisor = "xen"` and xenstored's socket, `[pmem] mode = "mirrored"` with a flush
hint per DIMM, the `[dsm] mode` of each boot (`ram`: the page is a frame pmemd populates in
the MMIO hole; `mmio`), and the tables through xl's `acpi_firmware=` (`ACPI.bin`).
Each boot runs one script (the first the positional SCRIPT, then each `--again`) on the same
backing files, in a new domain. The guest gets `/usr/bin/trap-notify` and
`/usr/bin/trap-pcicfg` (`pmemd.lab.trap_loop`) to time trap round trips.

Work directory (`--keep DIR`): `serial.log` (Xen + dom0), `guest-<i>.log`, `daemon-<i>.log`,
`dom0-driver.log`, `ACPI.bin`, per-boot configs, `results.json` and `summary.json`.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pmemd.config import ConfigError, from_mapping
from pmemd.daemon.tables import build_tables
from pmemd.lab.image import _write_cpio
from pmemd.lab.trap_loop import PCI_CONFIG_DATA, PCI_HOST_BRIDGE_ID, port_read_loop
from pmemd.lab.xen_image import DOM0_TMPFS, XenBootFiles

QEMU = "qemu-system-x86_64"
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
# After dom0's driver wrote its results: time for dom0 to power off before QEMU is stopped (a
# dom0 whose power-off panics leaves Xen halted, and QEMU would run to the whole deadline).
POWEROFF_GRACE = 60
DSM_PAGE = 0xFBFFF000  # the last page below hvmloader's platform area, in the MMIO hole
FLUSH_HINTS = 0xFBFFE000  # one 8-byte register per DIMM in the page below
XENSTORED_SOCKET = "/run/xenstored/socket"
TRAP_LOOPS = 2000  # reads per trap-cost program
MAX_GUEST_RAM = 1 << 30  # the outer QEMU has 3 GiB, dom0 1.5 GiB


@dataclass(frozen=True)
class XenLabOptions:
    config: Path
    scripts: list[Path]
    dsm_modes: list[str] = field(default_factory=lambda: ["ram"])  # per boot, the last repeats
    keep: Path | None = None
    timeout: float = 600.0
    console: TextIO = sys.stdout
    firmware: Path | None = None  # a bare HVM firmware ELF (xl firmware_override) instead of Linux


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("config", f"cannot read {path}: {e}") from None


def xen_lab_config(path: Path, mode: str) -> dict[str, Any]:
    """The guest config at `path` as the nested host serves it (see the module docstring)."""
    raw = _load(path)
    if mode not in ("ram", "mmio"):
        raise ConfigError("dsm.mode", f"the Xen lab runs \"ram\" or \"mmio\", got {mode!r}")
    old_dsm = raw.get("dsm", {})
    dsm = {k: old_dsm[k] for k in ("scrub_rate", "state_file", "notify_port") if k in old_dsm}
    dsm.update(mode=mode, page=DSM_PAGE)
    nvdimms = []
    for i, d in enumerate(raw.get("nvdimm", [])):
        backing = Path(d.get("backing", ""))
        nvdimms.append({**d, "backing": str(backing if backing.is_absolute() else (path.parent / backing).resolve()),
                        "flush_hint": FLUSH_HINTS + 8 * i})
    if isinstance(dsm.get("state_file"), str) and not Path(dsm["state_file"]).is_absolute():
        dsm["state_file"] = str((path.parent / dsm["state_file"]).resolve())
    out = {k: v for k, v in raw.items() if k not in ("dsm", "xen", "pmem", "qmp", "host", "nvdimm")}
    out.update(dsm=dsm, nvdimm=nvdimms, pmem={"mode": "mirrored", "writeback_interval": 3600.0},
               xen={"hypervisor": "xen", "xenstore": XENSTORED_SOCKET},
               qmp={"socket": f"/run/pmemd/qmp-{raw.get('domid', 0)}.sock"})
    cfg = from_mapping(out, base_dir=path.parent, source=path)
    if cfg.guest.highmem or cfg.guest.lowmem > MAX_GUEST_RAM:
        raise ConfigError("guest.lowmem", f"the Xen lab guest has at most {MAX_GUEST_RAM >> 20} MiB, below 4 GiB")
    return out


def to_toml(raw: dict[str, Any]) -> str:
    """TOML for a config mapping (scalars, tables, arrays of tables, arrays of scalars)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise ValueError(f"cannot write {v!r} as TOML")

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict | list) or
             (isinstance(v, list) and not any(isinstance(x, dict) for x in v))]
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{kk} = {value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            for item in v:
                lines += [f"[[{k}]]"] + [f"{kk} = {value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


# Every serial byte is a trap to QEMU-xen, about 4 ms each under nested TCG: a loglevel=7 boot
# log alone took minutes. `quiet` keeps the console for the script's output; read `dmesg` instead.
GUEST_CMDLINE = "console=ttyS0 rdinit=/init pci=noearly panic=-1 quiet"


def xl_config(name: str, cfg_raw: dict[str, Any], files: XenBootFiles, ramdisk: Path, serial: Path,
              acpi: Path, firmware: Path | None = None) -> str:
    cfg = from_mapping(cfg_raw)
    boot = [f'firmware_override = "{firmware}"'] if firmware is not None else [
        f'kernel = "{files.guest_kernel}"', f'ramdisk = "{ramdisk}"',
        f'extra = "{GUEST_CMDLINE}"']
    return "\n".join([
        f'name = "{name}"', 'type = "hvm"', f"memory = {cfg.guest.lowmem >> 20}", f"maxmem = {cfg.guest.lowmem >> 20}",
        f"vcpus = {cfg.guest.vcpus}", *boot, f'serial = "file:{serial}"',
        "vnc = 0", "sdl = 0", 'vga = "none"', 'on_poweroff = "destroy"', 'on_reboot = "destroy"',
        'on_crash = "destroy"', f'acpi_firmware = "{acpi}"', "",
    ])


def guest_initramfs(files: XenBootFiles, script: Path, notify_port: int, out: Path) -> None:
    """The lab initramfs with the script and the trap-cost programs appended (a second cpio)."""
    extra: dict[str, bytes | str] = {
        "script": script.read_bytes(),
        "usr/bin/trap-notify": port_read_loop(notify_port, TRAP_LOOPS),
        "usr/bin/trap-pcicfg": port_read_loop(PCI_CONFIG_DATA, TRAP_LOOPS, latch=PCI_HOST_BRIDGE_ID),
    }
    buffer = io.BytesIO(files.guest_initramfs.read_bytes())
    buffer.seek(0, io.SEEK_END)
    _write_cpio(buffer, extra)
    out.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1))  # less for the firmware to load


DOM0_SH = """#!/bin/sh
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1
W={work}
t() {{ cut -d' ' -f1 /proc/uptime; }}
mkdir -p /dev/pts /proc/xen; mount -t devpts devpts /dev/pts; mount -t xenfs xenfs /proc/xen
mkdir -p /run/xen /run/xenstored /run/pmemd /var/log/xen /var/lib/xen /run/lock
{mounts}
XENSTORED_ROOTDIR=/run/xenstored xenstored --pid-file /run/xenstore.pid
i=0; while ! xenstore-read -s / >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i+1)); sleep 1; done
xen-init-dom0 >/dev/null
xenconsoled --pid-file /run/xenconsoled.pid
echo "pmemd-xen-lab: xen daemons up at $(t)s"
{python} -m pmemd.lab.dom0 $W/plan.json > $W/dom0-driver.log 2>&1
echo "pmemd-xen-lab: dom0 driver done (rc=$?) at $(t)s"
cp /var/log/xen/* $W/ 2>/dev/null
xl dmesg > $W/xl-dmesg.log 2>&1
sync
echo o > /proc/sysrq-trigger
while :; do read _ < /dev/console; done  # init must outlive the power-off: a builtin, / goes away
"""


def qemu_command(files: XenBootFiles, work: Path, shares: list[Path]) -> list[str]:
    cmd = [
        QEMU, "-machine", "q35", "-accel", "tcg,thread=multi", "-smp", "2", "-cpu", "qemu64,+svm,+npt",
        "-m", "3072", "-display", "none", "-monitor", "none", "-serial", f"file:{work / 'serial.log'}", "-no-reboot",
        "-kernel", str(files.xen),
        "-append", "dom0_mem=1536M,max:1536M dom0_max_vcpus=2 console=com1 com1=115200,8n1 noreboot loglvl=all "
                   "guest_loglvl=all",
        "-initrd", f"{files.dom0_kernel} console=hvc0 earlyprintk=xen rdinit=/init pmemdlab={work},{files.dom0_initramfs}",
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=root",
        "-fsdev", f"local,id=lab,path={work},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=lab,mount_tag=lab",
    ]
    for i, path in enumerate(shares):
        cmd += ["-fsdev", f"local,id=d{i},path={path},security_model=none,multidevs=remap",
                "-device", f"virtio-9p-pci,fsdev=d{i},mount_tag=d{i}"]
    return cmd


def _shares(work: Path, cfgs: list[dict[str, Any]]) -> list[Path]:
    """Directories dom0 needs shared beyond its read-only view of / and the work directory: those of
    the backing and state files, and pmemd's own code where a dom0 tmpfs would hide it."""
    dirs = set()
    for raw in cfgs:
        for d in raw["nvdimm"]:
            dirs.add(Path(d["backing"]).parent)
        if isinstance(raw["dsm"].get("state_file"), str):
            dirs.add(Path(raw["dsm"]["state_file"]).parent)
    dirs.update(d for d in _code_dirs() if _hidden_in_dom0(d))
    dirs = {d for d in dirs if d != work and work not in d.parents}
    return sorted(d for d in dirs if not any(p in dirs for p in d.parents))  # a share covers its subdirs


def _code_dirs() -> list[Path]:
    """Where dom0's pmemd comes from: the venv (or Python prefix) and the package's parent."""
    return [Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2]]


def _hidden_in_dom0(path: Path) -> bool:
    """True where dom0's tmpfs covers the host's `path` (a clone or venv under /tmp, say)."""
    return any(path == Path("/", d) or Path("/", d) in path.parents for d in DOM0_TMPFS)


def run_xen_lab(options: XenLabOptions, files: XenBootFiles) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: QEMU is killed in a finally
    work = (options.keep or Path(tempfile.mkdtemp(prefix="pmemd-xenlab-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(options, files, work)
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(options: XenLabOptions, files: XenBootFiles, work: Path) -> int:
    for char in ", ":
        if char in str(work):
            raise ConfigError("--keep", f"the work directory's path may not contain {char!r} (QEMU's -initrd list)")
    boots, cfgs = [], []
    firmware = None
    if options.firmware is not None:  # dom0 sees the work directory, not necessarily the file's
        firmware = work / "firmware.elf"
        shutil.copyfile(options.firmware, firmware)
    for i, script in enumerate(options.scripts):
        mode = options.dsm_modes[min(i, len(options.dsm_modes) - 1)]
        raw = xen_lab_config(options.config, mode)
        cfgs.append(raw)
        cfg = from_mapping(raw)
        tables = build_tables(cfg)
        (work / "ACPI.bin").write_bytes(tables.acpi_firmware)
        pmemd_config = work / f"pmemd-{i}.toml"
        pmemd_config.write_text(to_toml(raw))
        ramdisk = work / f"guest-{i}.cpio"
        guest_initramfs(files, script, cfg.dsm.notify_port, ramdisk)
        name = f"pmemd-lab-{i}"
        xl = work / f"xl-{i}.cfg"
        xl.write_text(xl_config(name, raw, files, ramdisk, work / f"guest-{i}.log", work / "ACPI.bin",
                                firmware))
        boots.append({"name": name, "xl_config": str(xl), "pmemd_config": str(pmemd_config), "mode": mode,
                      "serial": str(work / f"guest-{i}.log"), "daemon_log": str(work / f"daemon-{i}.log")})
    shares = _shares(work, cfgs)
    mounts = "\n".join(f"mkdir -p {p}; mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 d{i} {p}"
                       for i, p in enumerate(shares))
    (work / "dom0.sh").write_text(DOM0_SH.format(work=work, mounts=mounts, python=sys.executable))
    (work / "dom0.sh").chmod(0o755)
    plan = {"boots": boots, "python": sys.executable, "timeout": options.timeout, "results": str(work / "results.json")}
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    (work / "results.json").unlink(missing_ok=True)
    started = time.monotonic()
    status = _boot_qemu(options, files, work, shares, boots)
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else []
    summary: dict[str, Any] = {"status": status, "wall_s": round(time.monotonic() - started, 1),
               "boots": [boot_summary(r, Path(b["daemon_log"]), b["mode"]) for r, b in zip(results, boots)]}
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for b in summary["boots"]:
        print(f"pmemd-xen-lab: {json.dumps(b)}", file=sys.stderr, flush=True)
    print(f"pmemd-xen-lab: whole run {summary['wall_s']} s, status {status}", file=sys.stderr, flush=True)
    return status


def _boot_qemu(options: XenLabOptions, files: XenBootFiles, work: Path, shares: list[Path],
               boots: list[dict[str, Any]]) -> int:
    """Run QEMU until dom0 powers off (or the overall deadline); stream the guests' consoles."""
    deadline = time.monotonic() + options.timeout * len(boots) + 180
    offsets = {b["serial"]: 0 for b in boots}
    results = work / "results.json"
    with (work / "qemu.log").open("wb") as qlog:
        proc = subprocess.Popen(qemu_command(files, work, shares), stdin=subprocess.DEVNULL, stdout=qlog,
                                stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            _stream(offsets, options.console)
            if results.exists():  # dom0's driver is done: whatever dom0's power-off does, stop soon
                deadline = min(deadline, time.monotonic() + POWEROFF_GRACE)
            time.sleep(1)
        _stream(offsets, options.console)
        if proc.poll() is None and results.exists():
            print("pmemd-xen-lab: dom0 wrote its results but did not power off; stopping QEMU", file=sys.stderr)
        elif proc.poll() is None:
            print("pmemd-xen-lab: the nested run outlived its deadline, stopping QEMU", file=sys.stderr)
            return EXIT_TIMEOUT
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not (work / "results.json").exists():
        tail = (work / "serial.log").read_bytes()[-3000:].decode(errors="replace") if (work / "serial.log").exists() else ""
        print(f"pmemd-xen-lab: dom0 left no results; end of the Xen/dom0 console:\n{tail}", file=sys.stderr)
        return EXIT_NO_STATUS
    results = json.loads((work / "results.json").read_text())
    statuses = [r.get("status") for r in results]
    for s in statuses:
        if s is None:
            return EXIT_NO_STATUS
        if s:
            return int(s)
    return 0


def _stream(offsets: dict[str, int], console: TextIO) -> None:
    for path, offset in offsets.items():
        p = Path(path)
        if not p.exists():
            continue
        with p.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        offsets[path] = offset + len(chunk)
        if chunk:
            console.write(chunk.decode(errors="replace").replace("\r", ""))
            console.flush()


def boot_summary(result: dict[str, Any], daemon_log: Path, mode: str) -> dict[str, Any]:
    """One boot's figures: wall time, DSM calls, traps, latency, flush write-backs and bytes."""
    out: dict[str, Any] = {"boot": result.get("name"), "mode": mode, "status": result.get("status"),
                           "wall_s": result.get("wall_s"), "dsm_calls": 0, "traps": 0, "flush_write_backs": 0,
                           "bytes_written_back": 0, "daemon_starts": 0}
    if not daemon_log.exists():
        return out
    for line in daemon_log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("event")
        if name == "dsm statistics":
            out["dsm_calls"] += event.get("calls", 0)
            out["traps"] += event.get("traps", 0)
            out.setdefault("traps_per_call", event.get("traps_per_call"))
            out.setdefault("traps_by_kind", event.get("traps_by_kind"))
            out.setdefault("latency_median_us", event.get("latency_median_us"))
            out.setdefault("latency_p95_us", event.get("latency_p95_us"))
        elif name == "flush hint: written back":
            out["flush_write_backs"] += 1
            out["bytes_written_back"] += event.get("bytes", 0)
        elif name == "pmem written back at stop":
            out["bytes_written_back"] += event.get("bytes", 0)
        elif name == "running":
            out["daemon_starts"] += 1
    return out
