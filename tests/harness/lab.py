"""Running `pmemd lab` boots from tests: one boot per call, its console, daemon log and summary.

Each boot runs `python -m pmemd.cli lab` in its own process with `--keep`, so a failing
test leaves the work directory (tables, console, daemon log) to read. `xen_lab_run` does the
same for one nested Xen run (`pmemd lab --xen`) of one or more guest boots.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# The nested Xen lab's guest (`pmemd lab --xen`): small, since dom0 mirrors every byte of PMEM, and
# an MSFT-family DIMM beside an Intel one (the Intel DIMM registers last, see test_lab_guest).
XEN_GUEST_CONFIG = """domid = 3
[guest]
lowmem = "256M"
[[nvdimm]]
backing = "nv0.img"
size = "34M"
label_size = "2M"
family = "msft"
[[nvdimm]]
backing = "nv1.img"
size = "34M"
label_size = "2M"
"""


@dataclass
class Boot:
    status: int
    console: str
    daemon_log: list[dict]
    summary: dict

    def section(self, name: str) -> str:
        """The console lines after `=== name` up to the next section or the exit line."""
        match = re.search(rf"^=== {name}\n(.*?)(?=^=== |^pmemd-lab: exit )", self.console, re.S | re.M)
        assert match, f"no section {name!r} in the console:\n{self.console}"
        return match.group(1)

    def json(self, name: str):
        text = self.section(name)
        start = min(i for i in (text.find("["), text.find("{")) if i >= 0)
        return json.JSONDecoder().raw_decode(text, start)[0]  # ndctl may print errors after it

    def events(self, event: str) -> list[dict]:
        return [r for r in self.daemon_log if r.get("event") == event]


def show(request: pytest.FixtureRequest, lines: Iterable[str]) -> None:
    """Print figures on the terminal past pytest's capture (they are read, not asserted)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            for line in lines:
                reporter.write_line(line)


def require_qemu() -> None:
    for tool in ("qemu-system-x86_64", "ndctl", "keyctl", "depmod", "apt-get"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./dev test installs qemu-system-x86, ndctl, keyutils, kmod)")
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is not installed")


def lab_boot(request: pytest.FixtureRequest, workdir: Path, config: str, script: str, *,
             early: str | None = None, extra: Sequence[str] = (), timeout: float = 150) -> Boot:
    """Boot once with `config` (TOML text) and `script` in `workdir`; `early` runs before the NVDIMM
    modules; `extra` are further `pmemd lab` options."""
    require_qemu()
    name = request.fixturename
    (workdir / "lab.toml").write_text(config)
    (workdir / f"{name}.sh").write_text(script)
    options = list(extra)
    if early is not None:
        (workdir / f"{name}-early.sh").write_text(early)
        options += ["--early", str(workdir / f"{name}-early.sh")]
    out = workdir / f"out-{name}"
    proc = subprocess.run(
        [sys.executable, "-m", "pmemd.cli", "lab", "--config", str(workdir / "lab.toml"), "--keep", str(out),
         "--timeout", str(timeout), *options, str(workdir / f"{name}.sh")],
        capture_output=True, text=True, timeout=timeout + 60,
    )
    summary = json.loads((out / "summary.json").read_text())
    show(request, [f"\n[lab boot {name}] wall {summary['wall_s']} s, {summary['dsm_calls']} DSM calls, "
                   f"handler median {summary['latency_median_us']} µs, p95 {summary['latency_p95_us']} µs"])
    log = [json.loads(line) for line in (out / "daemon.log").read_text().splitlines() if line.startswith("{")]
    return Boot(proc.returncode, (out / "console.log").read_text(), log, summary)


# Beyond the nested run's own deadline (per boot, plus Xen's boot): the lab always ends first and
# leaves its summary and consoles, so a slow host fails a test with the run's figures, not a kill.
XEN_LAB_SLACK = 240


@dataclass
class XenRun:
    """One `pmemd lab --xen` run: its exit status, each boot's console, dom0 result and daemon log."""

    status: int
    consoles: list[str]
    summary: dict
    results: list[dict]
    daemon_logs: list[list[dict]]
    stderr: str

    def section(self, boot: int, name: str) -> str:
        match = re.search(rf"^=== {name}\n(.*?)(?=^=== |^pmemd-lab: exit )", self.consoles[boot], re.S | re.M)
        assert match, f"no section {name!r} in guest {boot}'s console:\n{self.consoles[boot][-4000:]}\n{self.stderr[-3000:]}"
        return match.group(1)

    def json(self, boot: int, name: str):
        text = self.section(boot, name)
        start = min(i for i in (text.find("["), text.find("{")) if i >= 0)
        return json.JSONDecoder().raw_decode(text, start)[0]

    def events(self, boot: int, event: str) -> list[dict]:
        return [r for r in self.daemon_logs[boot] if r.get("event") == event]


def require_xen_lab(*tools: str) -> None:
    for tool in ("qemu-system-x86_64", "apt-get", "xl", *tools):
        if shutil.which(tool) is None and not Path(f"/usr/lib/xen-4.17/bin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (./dev test installs the Xen lab's packages)")


def xen_lab_run(request: pytest.FixtureRequest, work: Path, label: str, args: Sequence[str], *, boots: int,
                boot_timeout: float) -> XenRun:
    """Run `pmemd lab --xen --config work/lab.toml --keep work/out --timeout boot_timeout ARGS` and
    print the run's figures (whole run, each boot) whatever the outcome."""
    out = work / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pmemd.cli", "lab", "--xen", "--config", str(work / "lab.toml"), "--keep", str(out),
         "--timeout", str(boot_timeout), *args],
        capture_output=True, text=True, timeout=boot_timeout * boots + 180 + XEN_LAB_SLACK,
    )
    assert (out / "summary.json").exists(), proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else []
    show(request, [f"\n[{label}] whole run {summary['wall_s']} s, status {summary['status']}",
                   *(f"[{label}] {json.dumps(boot)}" for boot in summary["boots"])])
    consoles, logs = [], []
    for i in range(boots):
        console, log = out / f"guest-{i}.log", out / f"daemon-{i}.log"
        consoles.append(console.read_text(errors="replace").replace("\r", "") if console.exists() else "")
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        logs.append([json.loads(line) for line in lines if line.startswith("{")])
    return XenRun(proc.returncode, consoles, summary, results, logs, proc.stderr)
