"""`pmemd demo`: the main job on the embedded defaults, with a readable report."""

from __future__ import annotations

import argparse
from pathlib import Path

from acpi.nfit import parse_nfit
from acpi.table import parse_table
from pmemd import config as configmod
from pmemd.tables import build_tables

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "example.toml"


def run_demo(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    cfg = configmod.load(path)
    tables = build_tables(cfg)
    print(f"pmemd demo: guest domain {cfg.domid}, {len(cfg.nvdimms)} NVDIMM(s), DSM page "
          f"{cfg.dsm.page:#x} ({cfg.dsm.mode} mode), notify port {cfg.dsm.notify_port:#x}")
    for d in cfg.nvdimms:
        print(f"  NV{d.slot:02X}: {d.backing} -> guest [{d.address:#x}, {d.end:#x}) "
              f"{d.pmem_size >> 20} MiB PMEM, {d.label_size >> 10} KiB labels, node {d.node}"
              + (", unarmed" if d.unarmed else ""))
    for name, data in tables.files().items():
        note = ""
        if name != "NVDR.bin":
            parse_table(data)
            note = " checksum ok"
        print(f"  {name}: {len(data)} bytes{note}")
    print(f"  NFIT structures: {[s.header.type for s in parse_nfit(tables.nfit)]}")
    return 0
