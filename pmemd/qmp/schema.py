"""Command argument checking, QEMU's way: missing, unexpected and mistyped parameters are GenericErrors.

A command declares its parameters once (`Param`); `check_arguments` turns a client's
`arguments` object into keyword arguments (dashes become underscores) or raises the error
QEMU's input visitor would ("Parameter 'x' is missing", "Invalid parameter type for 'x',
expected: integer"). Integers are range-checked here too, so handlers see valid values only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import QmpError

U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Param:
    """One parameter: its wire name, JSON type, whether required, and integer bounds."""

    name: str
    kind: str  # "str", "int", "bool", "number", "str-list", "path" (a str a file can be named)
    required: bool = True
    lo: int = 0
    hi: int = U64_MAX

    @property
    def keyword(self) -> str:
        return self.name.replace("-", "_")


_EXPECTED = {"str": "string", "int": "integer", "bool": "boolean", "number": "number", "str-list": "array of strings",
             "path": "string"}


def check_arguments(params: tuple[Param, ...], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the handler. Errors: `QmpError` (GenericError) naming the parameter."""
    known = {p.name: p for p in params}
    for name in arguments:
        if name not in known:
            raise QmpError(f"Parameter '{name}' is unexpected")
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in arguments:
            if p.required:
                raise QmpError(f"Parameter '{p.name}' is missing")
            continue
        value = arguments[p.name]
        if not _is(p.kind, value):
            raise QmpError(f"Invalid parameter type for '{p.name}', expected: {_EXPECTED[p.kind]}")
        if p.kind == "int" and not p.lo <= value <= p.hi:
            raise QmpError(f"Parameter '{p.name}' expects a value between {p.lo} and {p.hi}")
        if p.kind == "number" and not math.isfinite(value):  # JSON's 1e999 parses as inf
            raise QmpError(f"Parameter '{p.name}' expects a finite number")
        if p.kind == "path" and _path_problem(value):
            raise QmpError(f"Parameter '{p.name}' {_path_problem(value)}")
        out[p.keyword] = value
    return out


def _path_problem(value: str) -> str | None:
    """Why no file can have this name (os.open would raise ValueError), or None."""
    if "\0" in value:
        return "contains a NUL character"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def _is(kind: str, value: object) -> bool:
    if kind in ("str", "path"):
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str-list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise ValueError(f"unknown parameter kind {kind!r}")
