"""A simulated Xen host as separate `pmemd` processes, for end-to-end tests and benches.

`Host` runs `pmemd sim`; `Host.guest_config` writes a guest's TOML (backing files in the
host's directory); `Host.start_guest` does what the toolstack does — `pmemd domain
create`, `pmemd run` (waiting for the daemon's "running" log event), `pmemd domain
unpause` — and `Host.run_script` runs `pmemd guest` on a JSON Lines script.

Every wait is on an event a process reports (a "ready" line, a JSON log record, an exit),
never on a sleep; `TIMEOUT` only turns a hang into a failure.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.config import guest_config, nvdimm, write_toml
from tests.harness.daemon import PMEMD, TIMEOUT, Daemon, LogWatcher, pmemd, start_daemon
from tests.harness.paths import REPO


@dataclass
class GuestRun:
    """A finished `pmemd guest` process: its exit status and one JSON object per output line."""

    returncode: int
    results: list[dict[str, Any]]
    stderr: str


@dataclass
class Host:
    """`pmemd sim` on `workdir/hv.sock`, plus the daemons started on it."""

    workdir: Path
    sim: subprocess.Popen[str] | None = None
    sim_log: LogWatcher | None = None
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.workdir / "hv.sock"

    def start(self) -> Host:
        self.sim = subprocess.Popen(
            [*PMEMD, "sim", "--socket", str(self.socket)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.sim_log = LogWatcher(self.sim.stderr, "pmemd sim")
        assert self.sim.stdout is not None
        line = self.sim.stdout.readline()
        assert line == "ready\n", f"pmemd sim did not start: {line!r}"
        return self

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        if self.sim is not None:
            self.sim.terminate()
            self.sim.wait(TIMEOUT)
            assert self.sim.stdout is not None and self.sim_log is not None
            self.sim.stdout.close()
            self.sim_log.close()

    # -- guests ---------------------------------------------------------------------------

    def guest_config(self, domid: int, *, mode: str = "mmio", vcpus: int = 1,
                     nvdimms: Iterable[Mapping[str, Any]] = (), name: str | None = None) -> Path:
        """Write a guest's TOML; each NVDIMM's backing file is created (sparse) beside it."""
        path = self.workdir / f"{name or f'dom{domid}'}.toml"
        dimms = [nvdimm(self.workdir / f"{path.stem}-nv{i}.img", d["size"], **{k: v for k, v in d.items() if k != "size"})
                 for i, d in enumerate(nvdimms)]
        raw = guest_config(domid, self.socket, lowmem="16M", vcpus=vcpus, mode=mode,
                           qmp=self.workdir / f"dom{domid}.qmp", nvdimms=dimms)
        return write_toml(path, raw)

    def domain(self, action: str, config: Path) -> dict[str, Any]:
        proc = pmemd("domain", action, "--config", str(config))
        assert proc.returncode == 0, f"pmemd domain {action} failed: {proc.stderr}"
        return json.loads(proc.stdout)

    def start_daemon(self, config: Path) -> Daemon:
        """`pmemd run`, returned once it is ready (READY=1)."""
        daemon = start_daemon(self.workdir, "--config", str(config), name=f"{config.stem}-{len(self.daemons)}")
        self.daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    def start_guest(self, config: Path) -> Daemon:
        """The toolstack's sequence: create the domain paused, start its daemon, unpause."""
        self.domain("create", config)
        daemon = self.start_daemon(config)
        self.domain("unpause", config)
        return daemon

    def wait_server_destroyed(self, domid: int, since: int) -> None:
        """Until the simulator has dropped the ioreq server of a daemon that died."""
        assert self.sim_log is not None
        self.sim_log.wait_for("ioreq server destroyed", since=since, domid=domid)

    # -- guest scripts ----------------------------------------------------------------------

    def script_process(self, config: Path) -> subprocess.Popen[str]:
        """A `pmemd guest` reading its script from stdin (write lines, then close stdin)."""
        return subprocess.Popen(
            [*PMEMD, "guest", "--config", str(config), "-"], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def run_script(self, config: Path, lines: Iterable[Mapping[str, Any] | str]) -> GuestRun:
        return finish(self.script_process(config), lines)


def script_text(lines: Iterable[Mapping[str, Any] | str]) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def finish(proc: subprocess.Popen[str], lines: Iterable[Mapping[str, Any] | str]) -> GuestRun:
    """Feed a started `pmemd guest` its script and collect its answers."""
    out, err = proc.communicate(script_text(lines), timeout=TIMEOUT)
    return GuestRun(proc.returncode, [json.loads(line) for line in out.splitlines()], err)


def run_all(procs_and_scripts: list[tuple[subprocess.Popen[str], list[Any]]]) -> list[GuestRun]:
    """Feed several started guest processes at once (their calls overlap), then collect each."""
    for proc, lines in procs_and_scripts:
        assert proc.stdin is not None
        proc.stdin.write(script_text(lines))
    for proc, _ in procs_and_scripts:
        assert proc.stdin is not None
        proc.stdin.close()
    runs = []
    for proc, _ in procs_and_scripts:
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        runs.append(GuestRun(proc.wait(TIMEOUT), [json.loads(line) for line in out.splitlines()], err))
    return runs

