"""Guest configs for tests: the repository's examples, and configs written for a test's own host."""

from __future__ import annotations

import tomllib
from typing import Any

from pmemd import config as configmod
from tests.harness.paths import CONFIGS


def load_example(name: str, **changes: Any) -> configmod.Config:
    """configs/NAME as `pmemd` loads it, or with top-level keys replaced by `changes`."""
    if not changes:
        return configmod.load(CONFIGS / name)
    raw = tomllib.loads((CONFIGS / name).read_text())
    raw.update(changes)
    return configmod.from_mapping(raw)
