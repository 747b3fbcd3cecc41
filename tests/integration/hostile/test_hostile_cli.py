"""Hostile inputs through the command line: config files (finding 4) and guest scripts (finding 5).

A bad value is one line on stderr naming the field and exit 1; a bad guest-script line is an
``{"error": ...}`` result and the script goes on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.config import write_config
from tests.harness.guest_script import run_script_async

PMEMD = [sys.executable, "-m", "pmemd.cli"]


def write_hostile_config(tmp_path: Path, nvdimm_extra: str) -> Path:
    """A config with raw TOML text in its [[nvdimm]] table: the hostile value is the test's input."""
    backing = tmp_path / "nv0.img"
    backing.write_bytes(b"")
    path = tmp_path / "guest.toml"
    path.write_text(f'domid = 7\n[[nvdimm]]\nbacking = "{backing}"\nsize = "4M"\n{nvdimm_extra}\n')
    return path


@pytest.mark.parametrize("family", ["[]", "{}", "[\"intel\"]", "1"])
def test_a_family_that_is_not_a_string_is_a_config_error_naming_the_field(tmp_path: Path, family: str) -> None:
    cfg = write_hostile_config(tmp_path, f"family = {family}")
    proc = subprocess.run([*PMEMD, "acpi", "--config", str(cfg), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pmemd: nvdimm[0].family: must be one of"), proc.stderr


GUEST_DOMID = 11
HOSTILE_LINES = [
    {"write": 18446744073709551612, "data": "0011223344556677"},
    {"read": 2**64, "length": 1},
    {"read": 2**64 - 4, "length": 8},
    {"write": 2**64 - 1, "data": "0000"},
]


async def test_guest_script_lines_past_the_address_space_are_errors_and_the_script_goes_on(sim_process, tmp_path: Path) -> None:
    await sim_process.create_domain(GUEST_DOMID, lowmem=64 << 20)
    cfg = write_config(tmp_path, sim_process.path, domid=GUEST_DOMID, nvdimms=1)
    run = await run_script_async(cfg, [*HOSTILE_LINES, {"read": 0x1000, "length": 4}])
    results = run.results
    assert run.returncode == 0, run.stderr
    assert [("error" in r and "address space" in r["error"]) for r in results[:-1]] == [True] * len(HOSTILE_LINES)
    assert results[-1] == {"data": "00000000"}
