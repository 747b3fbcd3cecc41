"""The `pmemd` command line: one subcommand per job, each in a function of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from pmemd import config as configmod

EXIT_USAGE = 2
EXIT_BAD_VALUE = 1


def _load_config(args: argparse.Namespace):
    try:
        return configmod.load(args.config, domid=getattr(args, "domain", None))
    except configmod.ConfigError as e:
        print(f"pmemd: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_VALUE) from None


def cmd_acpi(args: argparse.Namespace) -> int:
    """Write NFIT.bin, SSDT.bin and NVDR.bin for a config and print a JSON summary."""
    from acpi.table import parse_table
    from pmemd.tables import build_tables

    cfg = _load_config(args)
    tables = build_tables(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, data in tables.files().items():
        (out / name).write_bytes(data)
        entry: dict = {"file": str(out / name), "length": len(data)}
        if name != "NVDR.bin":
            try:
                parse_table(data)
                entry["checksum_ok"] = True
            except ValueError:
                entry["checksum_ok"] = False
        summary.append(entry)
    print(json.dumps({"domid": cfg.domid, "nvdimms": len(cfg.nvdimms), "tables": summary}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job on the embedded default config and print a readable report."""
    from pmemd.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmemd",
        description="Per-guest Xen device model for virtual NVDIMMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("acpi", help="build the guest's NFIT, SSDT and NVDR body from a config")
    p.add_argument("--config", required=True, help="guest config (TOML)")
    p.add_argument("--out", required=True, help="directory for NFIT.bin, SSDT.bin, NVDR.bin")
    p.set_defaults(func=cmd_acpi)

    p = sub.add_parser("demo", help="run pmemd on the embedded simulator and print a report")
    p.add_argument("--config", default=None, help="guest config (default: configs/example.toml's content)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
