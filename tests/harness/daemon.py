"""`pmemd` as a process, the one way tests start one: `pmemd run` (a `Daemon`), `pmemd sim` (a
`Simulator`) and one-shot commands.

`start_daemon` runs `pmemd run ARGS --log-format json` with $NOTIFY_SOCKET bound in the test's
directory, so readiness is what systemd would see (READY=1); a `LogWatcher` thread reads its
stderr, one JSON record a line. Plain tests call the blocking methods (`wait_ready`, `stop`); trio
tests await `ready` and `wait`, which run those in a thread so the test's own servers (an
in-process simulator) keep serving meanwhile.

Every wait is on something a process reports (READY=1, a log record, an exit), never on a sleep;
TIMEOUT only turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from tests.harness.paths import REPO

PMEMD = [sys.executable, "-m", "pmemd.cli"]
SCRIPT = Path(sys.executable).parent / "pmemd"  # the console script pyproject.toml installs
TIMEOUT = 60.0  # seconds; a process that reports nothing for this long has hung

LogRecord = dict[str, Any]


class LogWatcher:
    """Collects a process's JSON log lines (its stderr) and waits for a matching record."""

    def __init__(self, stream: Any, name: str) -> None:
        self.records: list[LogRecord] = []
        self.lines: list[str] = []
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
                self.lines.append(line)
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
            raise AssertionError(f"{self.name} {state} before logging {event!r} {fields}; last lines:\n{self.tail()}")
        return record

    def events(self, since: int = 0) -> list[str]:
        with self._cond:
            return [str(r.get("event")) for r in self.records[since:]]

    def text(self) -> str:
        """Everything read so far, as the process wrote it."""
        with self._cond:
            return "".join(self.lines)

    def tail(self, n: int = 20) -> str:
        with self._cond:
            return "".join(self.lines[-n:])


@dataclass
class Daemon:
    """One `pmemd run` process, its notify socket and its log; a context manager that kills it."""

    proc: subprocess.Popen[str]
    log: LogWatcher
    notify: socket.socket

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        """Until READY=1 on the notify socket (and the "running" record logged before it is read);
        fails at once if the daemon exits first."""
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            while True:
                readable, _, _ = select.select([self.notify, pidfd], [], [], TIMEOUT)
                if self.notify in readable:
                    if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                        break
                elif pidfd in readable:
                    status = self.proc.wait()
                    self.log.close()  # every record it wrote, for the caller to look into
                    raise AssertionError(f"daemon exited {status} before READY=1:\n{self.log.tail()}")
                else:
                    raise AssertionError(f"daemon sent no READY=1 within {TIMEOUT} s:\n{self.log.tail()}")
        finally:
            os.close(pidfd)
        self.log.wait_for("running")

    async def ready(self) -> None:
        """`wait_ready` from a trio test."""
        await trio.to_thread.run_sync(self.wait_ready)

    def terminate(self) -> None:
        """SIGTERM, what systemd sends to stop it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (if it still runs), wait for the exit and the end of its log; its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(TIMEOUT)
        self.log.close()
        return status

    async def wait(self) -> int:
        """From a trio test: its exit status, once it exited and its log is read to the end."""
        status = await trio.to_thread.run_sync(self.proc.wait, TIMEOUT)
        self.log.close()
        return status

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        self.notify.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def start_daemon(directory: Path, *args: str, name: str = "daemon", env: Mapping[str, str] | None = None) -> Daemon:
    """`pmemd run ARGS` (in `env`, else ours), its notify socket `directory`/NAME.notify; wait for it
    with `ready`."""
    notify_path = directory / f"{name}.notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    proc = subprocess.Popen(
        [*PMEMD, "run", "--log-format", "json", *args], cwd=REPO,
        env={**(os.environ if env is None else env), "NOTIFY_SOCKET": str(notify_path)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    return Daemon(proc, LogWatcher(proc.stderr, f"pmemd run ({name})"), notify)


@dataclass
class Simulator:
    """`pmemd sim` as a process (the simulated hypervisor, maybe xenstored too): its log (stderr)
    and its stdout, both read to the end so it never blocks on a full pipe."""

    proc: subprocess.Popen[str]
    log: LogWatcher
    out: LogWatcher

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self.log.close()
        self.out.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def start_sim(*args: str, command: tuple[str, ...] = (*PMEMD, "sim"), env: Mapping[str, str] | None = None) -> Simulator:
    """`pmemd sim ARGS` (or `command ARGS`; in `env`, else ours), returned once it printed "ready"."""
    proc = subprocess.Popen([*command, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sim = Simulator(proc, LogWatcher(proc.stderr, "pmemd sim"), LogWatcher(proc.stdout, "pmemd sim stdout"))
    try:
        sim.out.wait_for("ready")  # a plain line, recorded as {"event": "ready", "raw": True}
    except AssertionError:
        sim.close()
        raise
    return sim


def pmemd(*args: str, stdin: str = "", cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`pmemd ARGS` to completion, output captured; never raises on a non-zero exit. It runs the
    installed console script, as a user would (the module when the script is not installed)."""
    command = [str(SCRIPT)] if SCRIPT.exists() else PMEMD
    return subprocess.run([*command, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)


async def run_cli(*args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None,
                  ) -> subprocess.CompletedProcess[bytes]:
    """`pmemd ARGS` from a trio test (the test's servers keep serving), output as bytes."""
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [*PMEMD, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, cwd=REPO, env=env,
        )


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of field -> value text."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields
