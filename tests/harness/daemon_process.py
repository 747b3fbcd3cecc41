"""Helpers for tests that run `pmemd run` as a real process against the simulator.

Readiness is what systemd would see: the test binds a datagram socket, passes it as
$NOTIFY_SOCKET and waits for the daemon's READY=1 (bounded by a trio deadline).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

MiB = 1 << 20
READY_TIMEOUT = 30.0  # generous bound for a loaded 2-core CI machine; never a sleep




@dataclass
class Daemon:
    proc: trio.Process
    notify: trio.socket.SocketType
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self) -> None:
        """Wait for READY=1 on the notify socket; fail at once if the daemon exits first."""

        async def exited() -> None:
            await self.proc.wait()
            raise AssertionError(f"daemon exited {self.proc.returncode} before READY=1: {self.log()}")

        with trio.fail_after(READY_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(exited)
                while b"READY=1" not in (await self.notify.recv(4096)).split(b"\n"):
                    pass
                nursery.cancel_scope.cancel()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        with trio.fail_after(READY_TIMEOUT):
            return await self.proc.wait()

    def log(self) -> str:
        return self.stderr.read_text()

    def events(self) -> list[str]:
        import json

        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line)["event"])
            except (ValueError, KeyError):
                pass
        return out


@contextlib.asynccontextmanager
async def start_daemon(tmp_path: Path, *args: str, name: str = "daemon") -> AsyncIterator[Daemon]:
    """`pmemd run ARGS` with a notify socket, stderr in a file in `tmp_path`; killed if still running at the end."""
    notify_path = tmp_path / f"{name}.notify"
    stderr = tmp_path / f"{name}.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM) as notify:
        await notify.bind(str(notify_path))
        with open(stderr, "wb") as err:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "pmemd.cli", "run", "--log-format", "json", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
            )
        try:
            yield Daemon(proc, notify, stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


async def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run `pmemd ARGS` to completion, capturing output; never raises on a non-zero exit."""
    with trio.fail_after(READY_TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "pmemd.cli", *args], stdin=stdin, capture_stdout=True, capture_stderr=True,
            check=False,
        )


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of field -> value text."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields
