"""Trap cost on real Xen 4.17: pmemd's against QEMU-xen's, in the nested lab (issue target <= 1.5x).

    .venv/bin/python bench/xen_trap.py [RUNS]     (default 3; each run ~80 s on 2 cores)

Each run is one `pmemd lab --xen` with the bare probe guest (bench/xen_trap_probe.S) booted
twice on the same backing files, DSM page `ram` then `mmio`. In each boot the guest times 400
`_DSM` calls, then 400 reads of pmemd's notify port (a trap served by pmemd in dom0) and 400 PCI
config reads that Xen forwards to QEMU-xen (a trap served by QEMU-xen in the same dom0) in four
interleaved rounds of 100 each, in TSC cycles. The ratio pmemd/QEMU-xen is printed per run and as the median over runs: the host's load
moves both figures a lot from run to run (shared TCG cores), the median less.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pmemd.lab.xen_probe import cycles_per_operation, prepare_probe_run  # noqa: E402

MODES = ("ram", "mmio")


def waits(daemon_log: Path) -> dict[str, int]:
    """How the DSM server got its requests: its event channel's waits (the busiest channel's
    `event channel closed`) and the requests found by watching the slot (the busiest server's
    `ioreq server torn down`)."""
    channel: dict[str, int] = {}
    watched = 0
    for line in daemon_log.read_text(errors="replace").splitlines():
        if '"event channel closed"' in line:
            event = json.loads(line)
            counts = {k: event[k] for k in ("parked", "caught", "missed")}
            if sum(counts.values()) > sum(channel.values()):
                channel = counts
        elif '"ioreq server torn down"' in line:
            watched = max(watched, json.loads(line).get("watched", 0))
    return {**channel, "watched": watched}


def one_run(work: Path) -> dict[str, dict[str, int]]:
    args = prepare_probe_run(ROOT / "bench" / "xen_trap_probe.S", work, MODES)
    out = work / "out"
    subprocess.run([sys.executable, "-m", "pmemd.cli", "lab", "--xen", "--config", str(work / "lab.toml"),
                    "--keep", str(out), "--timeout", "300", *args],
                   cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    summary = json.loads((out / "summary.json").read_text())
    if summary["status"] != 0:
        raise SystemExit(f"nested run failed (status {summary['status']}); see {out}")
    return {mode: {**cycles_per_operation((out / f"guest-{i}.log").read_text(errors="replace")),
                   **waits(out / f"daemon-{i}.log")} for i, mode in enumerate(MODES)}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES}
    for n in range(runs):
        with tempfile.TemporaryDirectory(prefix="xentrap") as tmp:
            figures = one_run(Path(tmp))
        for mode, per in figures.items():
            ratio = per["pmemd_port_reads"] / per["qemu_pcicfg_reads"]
            ratios[mode].append(ratio)
            print(f"run {n + 1} {mode:4s}: trap pmemd {per['pmemd_port_reads']:>9} cycles, QEMU-xen "
                  f"{per['qemu_pcicfg_reads']:>9} cycles ({ratio:.2f}x); _DSM call {per['dsm_calls']} cycles; "
                  f"requests watched {per.get('watched')}, events parked/caught/missed "
                  f"{per.get('parked')}/{per.get('caught')}/{per.get('missed')}", flush=True)
    for mode in MODES:
        median = statistics.median(ratios[mode])
        print(f"median over {runs} runs, {mode}: pmemd/QEMU-xen {median:.2f}x "
              f"({'meets' if median <= 1.5 else 'misses'} the <= 1.5x target)")


if __name__ == "__main__":
    main()
