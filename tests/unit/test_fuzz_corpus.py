"""Every checked-in fuzz input — the seed corpus, the reproducers of fixed findings, and any crash
a fuzz run wrote — keeps its target's documented-error contract (fuzz/README.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fuzz.contract import TARGET_NAMES, load, replay
from tests.harness.paths import REPO

FUZZ = REPO / "fuzz"
HANG_SECONDS = 1.0


def inputs() -> list[Path]:
    return sorted(p for kind in ("corpus", "crashes") for p in (FUZZ / kind).glob("*/*") if not p.name.startswith("."))


@pytest.mark.parametrize("path", inputs(), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_a_checked_in_fuzz_input_keeps_its_targets_contract(path: Path) -> None:
    target = load(path.parent.name)
    start = time.process_time()
    with capture_logs():
        replay(target, path.read_bytes())
    assert time.process_time() - start < HANG_SECONDS


def test_every_target_has_a_seed_corpus() -> None:
    assert {name for name in TARGET_NAMES if any((FUZZ / "corpus" / name).iterdir())} == set(TARGET_NAMES)
