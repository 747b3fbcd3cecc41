"""The nested lab's bare probe guest (bench/xen_trap_probe.S): build it, read its figures.

It prints `pmemd-probe: WHAT N cycles 0xHEX` lines on its console for N `_DSM` calls
(`dsm_calls`), N reads of pmemd's notify port (`pmemd_port_reads`) and N PCI config reads
that Xen forwards to QEMU-xen (`qemu_pcicfg_reads`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

FIGURES = ("dsm_calls", "pmemd_port_reads", "qemu_pcicfg_reads")
LINE = re.compile(r"pmemd-probe: (\w+) (\d+) cycles 0x([0-9A-F]+)")


def build_probe(source: Path, out_dir: Path) -> Path:
    """Assemble and link `source` (binutils' as/ld) into a 32-bit ELF loaded at 1 MiB."""
    obj, elf = out_dir / "probe.o", out_dir / "probe.elf"
    subprocess.run(["as", "--32", "-o", str(obj), str(source)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-N", "--no-warn-rwx-segments", "-Ttext=0x100000", "-e", "_start",
                    "-o", str(elf), str(obj)], check=True)
    return elf


def cycles_per_operation(console: str) -> dict[str, int]:
    """Each figure the probe printed, in TSC cycles per operation."""
    return {what: int(total, 16) // int(n) for what, n, total in LINE.findall(console)}
