"""Config loader: a guest's TOML file → a validated `Config`.

Input: the file's bytes, read as `pmemd.config.load` reads them (TOML, UTF-8).
Contract: only `ConfigError` (ALLOWED: one message naming the field; `load` turns a TOML
syntax error into one too, as it does here) — a TypeError, KeyError or OverflowError from a
value of the wrong shape is a finding.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pmemd.config import ConfigError, from_mapping

ALLOWED: tuple[type[BaseException], ...] = (ConfigError,)
BASE_DIR = Path("/nonexistent/pmemd-fuzz")


def run(data: bytes) -> None:
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:  # what `load` reports as ConfigError("config", ...)
        raise ConfigError("config", f"not valid TOML: {e}") from None
    from_mapping(raw, base_dir=BASE_DIR)
