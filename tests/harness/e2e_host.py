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
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.config import guest_config, nvdimm, write_toml
from tests.harness.paths import REPO

PMEMD = [sys.executable, "-m", "pmemd.cli"]
TIMEOUT = 60.0  # seconds; a process that reports nothing for this long has hung

LogRecord = dict[str, Any]


class LogWatcher:
    """Collects a process's JSON log lines (its stderr) and waits for a matching record."""

    def __init__(self, stream: Any, name: str) -> None:
        self.records: list[LogRecord] = []
        self.name = name
        self._cond = threading.Condition()
        self._closed = False
        self._stream = stream
        self._thread = threading.Thread(target=self._read, args=(stream,), name=f"log-{name}", daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": line.rstrip("\n"), "raw": True}
            with self._cond:
                self.records.append(record if isinstance(record, dict) else {"event": record})
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def close(self) -> None:
        """After the process exited: read what is left, then close the stream."""
        self._thread.join(TIMEOUT)
        self._stream.close()

    def mark(self) -> int:
        """A position: `wait_for(..., since=mark)` looks only at records logged after it."""
        with self._cond:
            return len(self.records)

    def wait_for(self, event: str, *, since: int = 0, **fields: Any) -> LogRecord:
        """The first record after `since` with this event and these field values."""

        def match() -> LogRecord | None:
            for record in self.records[since:]:
                if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                    return record
            return None

        with self._cond:
            found = self._cond.wait_for(lambda: match() or self._closed, timeout=TIMEOUT)
            record = match()
        if record is None:
            state = "exited" if found else "timed out"
            tail = "\n".join(json.dumps(r) for r in self.records[-20:])
            raise AssertionError(f"{self.name} {state} before logging {event!r} {fields}; last records:\n{tail}")
        return record

    def events(self, since: int = 0) -> list[str]:
        with self._cond:
            return [str(r.get("event")) for r in self.records[since:]]


@dataclass
class Daemon:
    """One `pmemd run` process and its log."""

    proc: subprocess.Popen[str]
    log: LogWatcher

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(TIMEOUT)
        self.log.close()
        return status


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
            daemon.stop(signal.SIGKILL)
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

    def pmemd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PMEMD, *args], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)

    def domain(self, action: str, config: Path) -> dict[str, Any]:
        proc = self.pmemd("domain", action, "--config", str(config))
        assert proc.returncode == 0, f"pmemd domain {action} failed: {proc.stderr}"
        return json.loads(proc.stdout)

    def start_daemon(self, config: Path) -> Daemon:
        """`pmemd run`, returned once it has logged "running"."""
        proc = subprocess.Popen(
            [*PMEMD, "run", "--config", str(config)], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        daemon = Daemon(proc, LogWatcher(proc.stderr, f"pmemd run {config.name}"))
        self.daemons.append(daemon)
        daemon.log.wait_for("running")
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

