"""`pmemd guest` (the simulated guest driver) run on a JSON Lines script: one call a line in,
one JSON answer a line out."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.daemon import PMEMD, TIMEOUT, run_cli
from tests.harness.paths import REPO

Line = Mapping[str, Any] | str  # a call, or a raw line (malformed on purpose)


@dataclass
class GuestRun:
    """A finished `pmemd guest` process: its exit status and one JSON object per output line."""

    returncode: int
    results: list[dict[str, Any]]
    stderr: str


def script_text(lines: Iterable[Line]) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def script_process(config: Path) -> subprocess.Popen[str]:
    """A `pmemd guest` reading its script from stdin (write lines, then close stdin)."""
    return subprocess.Popen(
        [*PMEMD, "guest", "--config", str(config), "-"], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_script(config: Path, lines: Iterable[Line]) -> GuestRun:
    return finish(script_process(config), lines)


def finish(proc: subprocess.Popen[str], lines: Iterable[Line]) -> GuestRun:
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


async def run_script_async(config: Path, lines: Iterable[Line], *flags: str) -> GuestRun:
    """`run_script` from a trio test, so the test's own servers (an in-process simulator) keep
    serving while `pmemd guest FLAGS` runs."""
    result = await run_cli("guest", "--config", str(config), *flags, "-", stdin=script_text(lines).encode())
    return GuestRun(result.returncode, [json.loads(line) for line in result.stdout.decode().splitlines()],
                    result.stderr.decode())
