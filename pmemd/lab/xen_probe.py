"""The nested lab's bare probe guest (bench/xen_trap_probe.S): set a run up, read its figures.

It prints `pmemd-probe: WHAT N cycles 0xHEX` lines on its console for N `_DSM` calls
(`dsm_calls`), N reads of pmemd's notify port (`pmemd_port_reads`) and N PCI config reads
that Xen forwards to QEMU-xen (`qemu_pcicfg_reads`), the last two in interleaved rounds so that
a burst of host load slows both alike.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

LINE = re.compile(r"pmemd-probe: (\w+) (\d+) cycles 0x([0-9A-F]+)")

# What the probe expects: its `_DSM` calls go to NFIT handle 2, the second DIMM. Small, since dom0
# mirrors every byte of PMEM.
PROBE_CONFIG = """domid = 3
[guest]
lowmem = "256M"
[[nvdimm]]
backing = "nv0.img"
size = "34M"
label_size = "2M"
[[nvdimm]]
backing = "nv1.img"
size = "34M"
label_size = "2M"
"""
BACKING_SIZE = 34 << 20


def build_probe(source: Path, out_dir: Path) -> Path:
    """Assemble and link `source` (binutils' as/ld) into a 32-bit ELF loaded at 1 MiB."""
    obj, elf = out_dir / "probe.o", out_dir / "probe.elf"
    subprocess.run(["as", "--32", "-o", str(obj), str(source)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-N", "--no-warn-rwx-segments", "-Ttext=0x100000", "-e", "_start",
                    "-o", str(elf), str(obj)], check=True)
    return elf


def prepare_probe_run(source: Path, work: Path, modes: Sequence[str]) -> list[str]:
    """Build the probe, write `work/lab.toml` and the backing files; return the `pmemd lab --xen`
    arguments after `--config work/lab.toml` that boot it once per DSM page mode in `modes`."""
    probe = build_probe(source, work)
    for name in ("nv0.img", "nv1.img"):
        with (work / name).open("wb") as f:
            f.truncate(BACKING_SIZE)
    (work / "lab.toml").write_text(PROBE_CONFIG)
    script = work / "unused.sh"  # the lab takes a script per boot; the firmware runs none
    script.write_text("true\n")
    again = [arg for _ in modes[1:] for arg in ("--again", str(script))]
    return ["--firmware", str(probe), "--dsm-modes", ",".join(modes), *again, str(script)]


def cycles_per_operation(console: str) -> dict[str, int]:
    """Each figure the probe printed, in TSC cycles per operation."""
    return {what: int(total, 16) // int(n) for what, n, total in LINE.findall(console)}
