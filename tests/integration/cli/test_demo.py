"""`pmemd demo`, the README's first command: the whole job on the embedded simulator.

One run of the real command (a separate process, as a user types it); each test reads one
promise of its report.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def report() -> str:
    proc = subprocess.run([sys.executable, "-m", "pmemd.cli", "demo"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_demo_builds_tables_with_good_checksums(report: str) -> None:
    assert "NFIT.bin: 240 bytes, checksum ok" in report
    assert "SSDT.bin:" in report and "NVDR.bin:" in report


def test_demo_daemon_reports_running_before_the_guest_boots(report: str) -> None:
    assert "pmemd state key: running" in report


def test_demo_hvmloader_loads_both_dm_acpi_blobs(report: str) -> None:
    assert "hvmloader: loaded dm-acpi/NFIT (type 0) as NFIT" in report
    assert "hvmloader: loaded dm-acpi/NVDR (type 1) as SSDT" in report


def test_demo_maps_the_backing_file_into_the_guest(report: str) -> None:
    assert "map-pmem: 65536 frames" in report
    assert "read back matches (no traps: mapped memory)" in report
    assert "backing file at 0x1000: holds what the guest wrote" in report


def test_demo_label_block_round_trips(report: str) -> None:
    assert "label write of 256 bytes at 0x100: status 0 (success) (37 traps)" in report
    assert "label read back: status 0 (success), matches (37 traps)" in report


def test_demo_function_0_costs_four_traps(report: str) -> None:
    assert "root _DSM function 0: functions [1, 2, 3, 4, 5, 7, 8, 9] (4 traps)" in report


def test_demo_bad_calls_get_their_status(report: str) -> None:
    assert "label read past the area: status 3 (invalid input)" in report
    assert "called with the root's UUID: status 1 (not supported), answered by the AML (0 traps)" in report
