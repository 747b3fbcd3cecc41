"""The nested lab's supervisor (`pmemd.lab.xen_run._boot_qemu`) with a stand-in for QEMU: a
process that leaves dom0's results in the work directory and then never exits, as QEMU does
when dom0's power-off panics and Xen, told `noreboot`, halts instead."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from pmemd.lab import xen_run


def stand_in(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    monkeypatch.setattr(xen_run, "qemu_command", lambda files, work, shares: ["sh", "-c", script.format(work=work)])


def boot(tmp_path: Path, timeout: float) -> int:
    options = xen_run.XenLabOptions(config=tmp_path / "lab.toml", scripts=[], timeout=timeout, console=io.StringIO())
    return xen_run._boot_qemu(options, None, tmp_path, [], [])  # type: ignore[arg-type]


def test_results_written_then_no_power_off_end_the_run_after_the_grace(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(xen_run, "POWEROFF_GRACE", 1)
    stand_in(monkeypatch, """echo '[{{"status": 0}}]' > {work}/results.json; exec sleep 600""")
    started = time.monotonic()
    assert boot(tmp_path, timeout=300) == 0
    assert time.monotonic() - started < 30


def test_a_failed_boot_in_the_results_is_the_runs_status(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(xen_run, "POWEROFF_GRACE", 1)
    stand_in(monkeypatch, """echo '[{{"status": 0}}, {{"status": 3}}]' > {work}/results.json; exec sleep 600""")
    assert boot(tmp_path, timeout=300) == 3
