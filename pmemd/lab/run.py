"""`pmemd lab`: boot a real Linux guest under QEMU TCG against the daemon, run a script in it.

One run: prepare the boot files (`pmemd.lab.image`, cached), give the config the QEMU
transport (doorbell socket and guest-RAM file in the work directory), build its NFIT and
SSDT, start the daemon in this process, boot QEMU with those tables (`-acpitable`), the
NVDIMM backing files as pc-dimms at the NFIT's addresses and the DSM page reserved with
`memmap=`, stream the guest console, and return the script's exit status.

Work directory (`--keep DIR`, else a temporary one removed afterwards): `NFIT.bin`,
`SSDT.bin`, `console.log` (the guest's serial console), `daemon.log` (JSON lines) and
`summary.json` (wall time, DSM calls, handler latency median/p95, status).
Exit status: the script's; 124 when the guest outlives `timeout`; 125 when QEMU ends
without the script's exit line (a kernel panic, a QEMU error).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio

from acpi.doorbell import RESERVED_SIZE
from pmemd.config import Config, ConfigError, from_mapping
from pmemd.daemon.guest import Guest
from pmemd.daemon.serve import serve_guest
from pmemd.daemon.tables import build_tables
from pmemd.lab.image import EARLY_FW_CFG, EXIT_MARKER, SCRIPT_FW_CFG, BootFiles
from pmemd.process import logs

QEMU = "qemu-system-x86_64"
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
MAX_LAB_RAM = 0xB0000000  # -M pc keeps RAM up to here below 4 GiB; more would split it
DEVICE_MEMORY_BASE = 1 << 32  # -M pc's hotplug window starts at 4 GiB (with no RAM above)
GiB = 1 << 30


@dataclass(frozen=True)
class LabOptions:
    config: Path
    script: Path
    keep: Path | None = None
    timeout: float = 300.0
    stop_daemon_after_calls: int | None = None  # fault drill: stop serving after N calls
    console: TextIO = sys.stdout
    append: str = ""  # extra kernel command line (e.g. "nfit.dyndbg=+p")
    early: Path | None = None  # run before the NVDIMM modules load (e.g. loading DIMM keys)


def lab_config(path: Path, workdir: Path, ram: Path) -> Config:
    """The config at `path`, served over the QEMU transport from `workdir` and `ram`.

    `[dsm] page`, `timeout_ms` and `notify_port` are kept when the file already asks for
    transport "qemu"; any Xen-transport [dsm] settings are replaced.
    """
    try:
        with path.open("rb") as f:
            raw: dict[str, Any] = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("config", f"cannot read {path}: {e}") from None
    old = raw.get("dsm", {})
    dsm = {"transport": "qemu", "doorbell": str(workdir / "doorbell.sock"), "ram": str(ram)}
    if isinstance(old, dict) and old.get("transport") == "qemu":
        dsm.update({k: old[k] for k in ("page", "timeout_ms", "notify_port") if k in old})
    qmp = {"socket": str(workdir / "qmp.sock")}  # the daemon's QMP endpoint, private to this run
    cfg = from_mapping({**raw, "dsm": dsm, "qmp": qmp}, base_dir=path.parent, source=path)
    if cfg.guest.highmem:
        raise ConfigError("guest.highmem", "the lab guest has RAM below 4 GiB only: set it to 0")
    if cfg.guest.lowmem > MAX_LAB_RAM:
        raise ConfigError("guest.lowmem", f"the lab's -M pc guest takes at most {MAX_LAB_RAM >> 20} MiB")
    return cfg


def qemu_command(cfg: Config, boot: BootFiles, workdir: Path, script: Path, append: str = "",
                 early: Path | None = None) -> list[str]:
    """QEMU TCG with our tables, the backing files as pc-dimms and the doorbell; `append` is
    added to the kernel command line; `early` is passed as fw_cfg `opt/pmemd/early`."""
    ram = cfg.guest.lowmem
    ends = [d.end for d in cfg.nvdimms] or [DEVICE_MEMORY_BASE]
    window = -(-(max(ends) - DEVICE_MEMORY_BASE) // GiB) * GiB
    cmd = [
        QEMU, "-machine", "pc,nvdimm=off,memory-backend=ram0", "-accel", "tcg", "-smp", str(cfg.guest.vcpus),
        "-m", f"{ram >> 20}M,slots={max(1, len(cfg.nvdimms))},maxmem={(ram + window) >> 20}M",
        "-object", f"memory-backend-file,id=ram0,share=on,mem-path={cfg.dsm.ram},size={ram}",
        "-chardev", f"socket,id=bell,path={cfg.dsm.doorbell}",
        "-device", f"isa-debugcon,iobase={cfg.dsm.notify_port:#x},chardev=bell",
        "-acpitable", f"file={workdir / 'NFIT.bin'}", "-acpitable", f"file={workdir / 'SSDT.bin'}",
        "-fw_cfg", f"name={SCRIPT_FW_CFG},file={script}",
        "-kernel", str(boot.kernel), "-initrd", str(boot.initramfs),
        "-append", " ".join(filter(None, (
            f"console=ttyS0 panic=-1 quiet acpi_no_memhotplug memmap={RESERVED_SIZE >> 10}K${cfg.dsm.page:#x}",
            append,
        ))),
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
    ]
    if early is not None:
        cmd += ["-fw_cfg", f"name={EARLY_FW_CFG},file={early}"]
    for d in cfg.nvdimms:
        if d.map_failed:  # the platform "failed to map" it: the NFIT has no SPA range for it either
            continue
        cmd += [
            "-object", f"memory-backend-file,id=nv{d.slot},share=on,mem-path={d.backing},size={d.pmem_size}",
            "-device", f"pc-dimm,id=dimm{d.slot},memdev=nv{d.slot},addr={d.address:#x}",
        ]
    return cmd


def run_lab(options: LabOptions, boot: BootFiles) -> int:
    """Run one boot; returns the script's exit status (see the module docstring)."""
    workdir = options.keep or Path(tempfile.mkdtemp(prefix="pmemd-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    ram = (shm if shm.is_dir() else workdir) / f"pmemd-lab-{os.getpid()}-{time.monotonic_ns()}.ram"
    try:
        cfg = lab_config(options.config, workdir, ram)
        with ram.open("wb") as f:
            f.truncate(cfg.guest.lowmem)
        tables = build_tables(cfg)
        (workdir / "NFIT.bin").write_bytes(tables.nfit)
        (workdir / "SSDT.bin").write_bytes(tables.ssdt)
        with (workdir / "daemon.log").open("w") as daemon_log:
            logs.configure("json", domid=cfg.domid, stream=daemon_log)
            summary = trio.run(_boot, cfg, boot, workdir, options)
        (workdir / "summary.json").write_text(json.dumps(summary) + "\n")
        print(f"pmemd-lab: {json.dumps(summary)}", file=sys.stderr, flush=True)
        return int(summary["status"])
    finally:
        ram.unlink(missing_ok=True)
        if options.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


async def _boot(cfg: Config, boot: BootFiles, workdir: Path, options: LabOptions) -> dict[str, Any]:
    started = time.monotonic()
    status: int | None = None
    async with trio.open_nursery() as nursery:
        daemon_scope = trio.CancelScope()
        guest: Guest = await nursery.start(partial(_serve, cfg, daemon_scope))
        if options.stop_daemon_after_calls is not None:
            nursery.start_soon(_stop_daemon_after, guest, daemon_scope, options.stop_daemon_after_calls)
        cmd = qemu_command(cfg, boot, workdir, options.script, options.append, options.early)
        proc: trio.Process = await nursery.start(partial(
            trio.run_process, cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False))
        with (workdir / "console.log").open("w") as console_log:
            with trio.move_on_after(options.timeout) as timer:
                status = await _stream_console(proc, options.console, console_log)
                await proc.wait()
        if timer.cancelled_caught:
            status = EXIT_TIMEOUT
            print(f"pmemd-lab: guest still running after {options.timeout} s, stopping it", file=sys.stderr)
        proc.kill()
        stats = guest.doorbell.statistics().summary() if guest.doorbell else {}
        daemon_scope.cancel()
        nursery.cancel_scope.cancel()
    return {
        "status": EXIT_NO_STATUS if status is None else status,
        "wall_s": round(time.monotonic() - started, 2),
        "dsm_calls": stats.get("calls", 0),
        "latency_median_us": stats.get("latency_median_us"),
        "latency_p95_us": stats.get("latency_p95_us"),
        "stale_rings": stats.get("stale_rings", 0),
    }


async def _serve(cfg: Config, scope: trio.CancelScope, *, task_status: trio.TaskStatus[Guest]) -> None:
    with scope:
        await serve_guest(cfg, "", task_status=task_status)


async def _stop_daemon_after(guest: Guest, scope: trio.CancelScope, calls: int) -> None:
    assert guest.doorbell is not None
    while guest.doorbell.statistics().calls < calls:  # noqa: ASYNC110 - counts, not an event
        await trio.sleep(0.001)
    print(f"pmemd-lab: stopping the daemon after {calls} DSM calls", file=sys.stderr, flush=True)
    scope.cancel()


async def _stream_console(proc: trio.Process, console: TextIO, log_file: TextIO) -> int | None:
    """Copy the guest console out as it arrives; the script's status from its exit line."""
    assert proc.stdout is not None
    status = None
    pending = b""
    while chunk := await proc.stdout.receive_some(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r") + "\n"
            console.write(line)
            log_file.write(line)
            if line.startswith(EXIT_MARKER):
                status = int(line[len(EXIT_MARKER):].strip() or EXIT_NO_STATUS)
        console.flush()
    return status
