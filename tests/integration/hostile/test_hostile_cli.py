"""Hostile inputs through the command line: config files (finding 4) and guest scripts (finding 5).

A bad value is one line on stderr naming the field and exit 1; a bad guest-script line is an
``{"error": ...}`` result and the script goes on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PMEMD = [sys.executable, "-m", "pmemd.cli"]


def write_config(tmp_path: Path, nvdimm_extra: str) -> Path:
    backing = tmp_path / "nv0.img"
    backing.write_bytes(b"")
    path = tmp_path / "guest.toml"
    path.write_text(f'domid = 7\n[[nvdimm]]\nbacking = "{backing}"\nsize = "4M"\n{nvdimm_extra}\n')
    return path


@pytest.mark.parametrize("family", ["[]", "{}", "[\"intel\"]", "1"])
def test_a_family_that_is_not_a_string_is_a_config_error_naming_the_field(tmp_path: Path, family: str) -> None:
    cfg = write_config(tmp_path, f"family = {family}")
    proc = subprocess.run([*PMEMD, "acpi", "--config", str(cfg), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pmemd: nvdimm[0].family: must be one of"), proc.stderr
