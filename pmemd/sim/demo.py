"""`pmemd demo`: the main job on the embedded simulator, with a readable report.

One process plays the host: the simulated hypervisor, xenstored (with hvmloader's dm-acpi
pass at the guest's boot) and the daemon run in it (embedded); the toolstack's steps are
direct calls (create the paused domain, reserve the dm-acpi buffer, wait for the daemon's
state key, unpause); the guest is a separate `pmemd guest` process running a short script —
the same path every end-to-end test takes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import trio

from acpi.nfit import parse_nfit
from acpi.table import parse_table, parse_tables
from pmemd import config as configmod
from pmemd.daemon.serve import serve_guest
from pmemd.daemon.state_key import wait_state
from pmemd.daemon.tables import build_tables
from pmemd.process import logs
from pmemd.sim.hv_domain import Layout
from pmemd.sim.hv_pmem import PmemRegion
from pmemd.sim.hvmloader import attach
from pmemd.sim.hypervisor import serve_hypervisor
from pmemd.storage import prepare_backing
from pmemd.toolstack import create_domain_keys, reserve_dm_acpi
from pmemd.xenstore import open_client
from pmemd.xenstored.server import serve_xenstored

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "example.toml"
PACKAGED_CONFIG = Path(__file__).resolve().parents[1] / "data" / "example.toml"  # the same file, in the wheel
DEFAULT_CONFIG = REPO_CONFIG if REPO_CONFIG.is_file() else PACKAGED_CONFIG
# The simulated host pmem: the filesystem's block device seen at this SPA (host frames are
# its FIEMAP physical offsets from there), unless the config has its own [host] section.
HOST_SPA = 0x10_0000_0000
HOST_SIZE = 1 << 42
PMEM_OFFSET = 0x1000  # where the demo guest writes into its PMEM (and so the backing file)
PMEM_DATA = b"written by the guest through its physmap\n"
LABEL_OFFSET = 0x100
LABEL_BLOCK = bytes(range(256))


def demo_script(cfg: configmod.Config) -> list[dict[str, Any]]:
    """What the demo asks: masks, label size, a label block written and read back, bad calls."""
    slot = cfg.nvdimms[0].slot
    offset_length = LABEL_OFFSET.to_bytes(4, "little") + len(LABEL_BLOCK).to_bytes(4, "little")
    past_end = (cfg.nvdimms[0].label_size - 16).to_bytes(4, "little") + (32).to_bytes(4, "little")
    return [
        {"dimm": None, "function": 0, "revision": 1},
        {"dimm": slot, "function": 0, "revision": 1},
        {"dimm": slot, "function": 0, "revision": 2},
        {"dimm": slot, "function": 4, "revision": 1},
        {"dimm": slot, "function": 6, "revision": 1, "arg3": (offset_length + LABEL_BLOCK).hex()},
        {"dimm": slot, "function": 5, "revision": 1, "arg3": offset_length.hex()},
        {"dimm": slot, "function": 5, "revision": 1, "arg3": past_end.hex()},
        {"dimm": slot, "function": 1, "revision": 1, "uuid": "2f10e7a4-9e91-11e4-89d3-123b93f75cba"},
        {"write": cfg.nvdimms[0].address + PMEM_OFFSET, "data": PMEM_DATA.hex()},
        {"read": cfg.nvdimms[0].address + PMEM_OFFSET, "length": len(PMEM_DATA)},
    ]


def demo_config(source: Path, workdir: Path) -> configmod.Config:
    """The example config with its files and sockets moved into `workdir`."""
    with source.open("rb") as f:
        raw = tomllib.load(f)
    raw["xen"] = {"hypervisor": str(workdir / "hypervisor.sock"), "xenstore": str(workdir / "xenstored.sock")}
    raw["qmp"] = {"socket": str(workdir / "qmp.sock")}
    raw.setdefault("host", {"spa_base": HOST_SPA, "data": [HOST_SPA, HOST_SPA + HOST_SIZE]})
    for i, nvdimm in enumerate(raw.get("nvdimm", [])):
        nvdimm["backing"] = str(workdir / f"nv{i}.img")
    return configmod.from_mapping(raw, base_dir=workdir)


def mask_bits(out_hex: str) -> list[int]:
    mask = int.from_bytes(bytes.fromhex(out_hex)[:4], "little")
    return [bit for bit in range(32) if mask >> bit & 1 and bit]


STATUS_NAMES = {0: "success", 1: "not supported", 2: "no such device", 3: "invalid input", 4: "hardware error"}


def report(cfg: configmod.Config, results: list[dict[str, Any]]) -> list[str]:
    """Readable lines, one per scripted call."""
    root0, dimm0, dimm0_r2, size, write, read, past, wrong, pmem_write, pmem_read = results
    name = f"NV{cfg.nvdimms[0].slot:02X}"

    def traps(r: dict[str, Any]) -> str:
        return f"{r['ioreqs']} trap{'s' if r['ioreqs'] != 1 else ''}"

    def status(r: dict[str, Any]) -> str:
        return f"status {r['status']} ({STATUS_NAMES.get(r['status'], 'extended')})"

    label = bytes.fromhex(size["out"])
    read_back = bytes.fromhex(read["out"])[4:]
    return [
        f"root _DSM function 0: functions {mask_bits(root0['out'])} ({traps(root0)})",
        f"{name} function 0, revision 1: functions {mask_bits(dimm0['out'])} ({traps(dimm0)})",
        f"{name} function 0, revision 2: functions {mask_bits(dimm0_r2['out'])} ({traps(dimm0_r2)})",
        f"{name} label area: {int.from_bytes(label[4:8], 'little')} bytes, max transfer "
        f"{int.from_bytes(label[8:12], 'little')} bytes ({traps(size)})",
        f"{name} label write of {len(LABEL_BLOCK)} bytes at {LABEL_OFFSET:#x}: {status(write)} ({traps(write)})",
        f"{name} label read back: {status(read)}, "
        f"{'matches' if read_back == LABEL_BLOCK else 'DOES NOT MATCH'} ({traps(read)})",
        f"{name} label read past the area: {status(past)} ({traps(past)})",
        f"{name} called with the root's UUID: {status(wrong)}, answered by the AML ({traps(wrong)})",
        f"{name} PMEM at {cfg.nvdimms[0].address + PMEM_OFFSET:#x}: guest write "
        f"{'ok' if pmem_write.get('ok') else pmem_write}, read back "
        f"{'matches' if pmem_read.get('data') == PMEM_DATA.hex() else pmem_read} (no traps: mapped memory)",
    ]


async def run_guest(cfg: configmod.Config, source: Path, script: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `script` in a separate `pmemd guest` process (the guest needs no backing files)."""
    text = "".join(json.dumps(line) + "\n" for line in script)
    proc = await trio.run_process(
        [sys.executable, "-m", "pmemd.cli", "guest", "--config", str(source),
         "--hypervisor", cfg.xen.hypervisor, "-"],
        stdin=text.encode(), capture_stdout=True, check=True,
    )
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


async def demo(cfg: configmod.Config, source: Path, log_path: Path) -> tuple[list[str], list[str]]:
    """Host, toolstack, daemon and guest boot in order; returns (boot lines, call lines)."""
    for nvdimm in cfg.nvdimms:
        prepare_backing(nvdimm)  # allocated, written extents: what the mapping requires
    async with trio.open_nursery() as nursery:
        # The host: simulated hypervisor (with its pmem), xenstored, hvmloader at the guest's boot.
        hypervisor = await nursery.start(serve_hypervisor, cfg.xen.hypervisor)
        if cfg.host is not None and isinstance(cfg.host.spa_base, int):
            hypervisor.pmem.add_region(PmemRegion("demo disk", cfg.host.spa_base, *_host_data(cfg),
                                                  files=tuple(d.backing for d in cfg.nvdimms)))
        store = await nursery.start(serve_xenstored, cfg.xen.xenstore)
        hvmloader = attach(hypervisor, store)
        # The toolstack: the domain, paused, with its dm-acpi buffer reserved in xenstore.
        guest = cfg.guest
        domain = hypervisor.create_domain(cfg.domid, Layout(guest.lowmem, guest.highmem, guest.mmio_hole, guest.vcpus))
        buffer = reserve_dm_acpi(cfg)
        async with open_client(cfg.xen.xenstore) as xs:
            await create_domain_keys(xs, cfg, buffer)
            # The device model; the toolstack unpauses once its state key says "running".
            daemon = await nursery.start(serve_guest, cfg, cfg.xen.hypervisor)
            state = await wait_state(xs, cfg.domid)
        hypervisor.unpause_domain(domain)
        boot = [f"toolstack: dm-acpi buffer {buffer.length} bytes at {buffer.address:#x}; "
                f"pmemd state key: {state}"]
        loaded = hvmloader.results.get(cfg.domid)
        if loaded is not None:
            for table in loaded.tables:
                parse_table(table.data)
                boot.append(f"hvmloader: loaded dm-acpi/{table.entry} (type {table.type}) as "
                            f"{table.signature}, {len(table.data)} bytes, checksum ok")
            boot += [f"hvmloader: skipped {s.entry}: {s.reason}" for s in loaded.skipped]
        results = await run_guest(cfg, source, demo_script(cfg))
        on_disk = _read_at(cfg.nvdimms[0].backing, PMEM_OFFSET, len(PMEM_DATA))
        boot += [f"map-pmem: {r.frames} frames from {r.extents} extents in {r.calls} populate calls"
                 for r in daemon.pmem_maps.values()]
        stats = daemon.server.statistics()
        lines = report(cfg, results)
        verdict = "holds what the guest wrote" if on_disk == PMEM_DATA else f"holds {on_disk!r}"
        lines.append(f"backing file at {PMEM_OFFSET:#x}: {verdict}")
        lines.append(f"daemon: {daemon.device.stats.calls} _DSM calls, {stats.served} ioreqs served, "
                     f"setup steps {daemon.completed}; log in {log_path}")
        nursery.cancel_scope.cancel()
    return boot, lines


def _host_data(cfg: configmod.Config) -> tuple[int, int]:
    assert cfg.host is not None
    if cfg.host.data:
        start, end = cfg.host.data
        return start, end
    assert cfg.host.spa_base is not None  # the demo config sets it
    return cfg.host.spa_base, cfg.host.spa_base + HOST_SIZE


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def run_demo(args: argparse.Namespace) -> int:
    source = Path(args.config) if args.config else DEFAULT_CONFIG
    with tempfile.TemporaryDirectory(prefix="pmemd-demo-") as tmp:
        workdir = Path(tmp)
        cfg = demo_config(source, workdir)
        tables = build_tables(cfg)
        print(f"pmemd demo: domain {cfg.domid}, {len(cfg.nvdimms)} NVDIMM(s), DSM page {cfg.dsm.page:#x} "
              f"({cfg.dsm.mode} mode), notify port {cfg.dsm.notify_port:#x}")
        for d in cfg.nvdimms:
            print(f"  NV{d.slot:02X}: guest [{d.address:#x}, {d.end:#x}) {d.pmem_size >> 20} MiB PMEM, "
                  f"{d.label_size >> 10} KiB labels, node {d.node}" + (", unarmed" if d.unarmed else ""))
        for name, data in tables.files().items():
            note = ""
            if name != "NVDR.bin":
                parse_tables(data)
                note = ", checksum ok"
            print(f"  {name}: {len(data)} bytes{note}")
        print(f"  NFIT structure types: {[s.header.type for s in parse_nfit(tables.nfit)]}")
        # A fresh name per run: two demos at once (two CI jobs on one machine) share the domid.
        fd, name = tempfile.mkstemp(prefix=f"pmemd-demo-{cfg.domid}-", suffix=".log")
        log_path = Path(name)
        with open(fd, "w") as log_file:
            logs.configure("json", domid=cfg.domid, stream=log_file)
            boot, lines = trio.run(demo, cfg, source, log_path)
        print("boot:")
        for line in boot:
            print(f"  {line}")
        print("guest calls (as the generated AML makes them):")
        for line in lines:
            print(f"  {line}")
    return 0
