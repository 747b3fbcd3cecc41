"""CI's fuzz smoke: `./dev fuzz TARGET 2` for every target — the fuzzer starts, runs its seeds and
mutations for two seconds, and finds nothing (fuzz/README.md has the contracts)."""

from __future__ import annotations

import json
import subprocess

import pytest

from fuzz.contract import TARGET_NAMES
from tests.harness.paths import REPO

SMOKE_SECONDS = 2


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_two_seconds_of_fuzzing_find_nothing(target: str) -> None:
    proc = subprocess.run([str(REPO / "dev"), "fuzz", target, str(SMOKE_SECONDS)], cwd=REPO,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["runs"] > 0 and (summary["exceptions"], summary["hangs"]) == (0, 0)
