"""Function tables: which `(function, revision)` pairs a kind of target implements.

One table per target kind (the NFIT root, an Intel-family DIMM). Handlers are registered,
never switched on, so adding a function is one `register` call in `families.py` and the
dispatcher stays untouched. Function 0 is not registered: the table derives its mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic

from .call import D, Handler

MAX_FUNCTION = 31
"""Function 0's reply is a 32-bit mask, so functions 1..31 are all it can advertise."""


def always(device: object) -> bool:
    return True


@dataclass(frozen=True)
class Entry(Generic[D]):
    """A registered function: its handler and whether a given device offers it."""

    function: int
    revision: int
    handler: Handler[D]
    available: Callable[[D], bool]


class FunctionTable(Generic[D]):
    """The functions of one target kind, keyed by (function number, revision)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[tuple[int, int], Entry[D]] = {}

    def register(
        self,
        function: int,
        revision: int,
        handler: Handler[D],
        *,
        available: Callable[[D], bool] = always,
    ) -> None:
        """Serve `function` at `revision` with `handler` on devices where `available(device)`.

        `available` keeps per-device capability (e.g. "has a label area") out of the
        handlers: an unavailable function is neither advertised nor called.
        """
        if not 1 <= function <= MAX_FUNCTION:
            raise ValueError(f"{self.name}: function {function} is outside 1..{MAX_FUNCTION}")
        if revision < 1:
            raise ValueError(f"{self.name}: revision {revision} must be at least 1")
        key = (function, revision)
        if key in self._entries:
            raise ValueError(f"{self.name}: function {function} revision {revision} is already registered")
        self._entries[key] = Entry(function, revision, handler, available)

    def lookup(self, function: int, revision: int, device: D) -> Entry[D] | None:
        """The entry serving this call on `device`, or None (answered "not supported")."""
        entry = self._entries.get((function, revision))
        if entry is None or not entry.available(device):
            return None
        return entry

    def mask(self, revision: int, device: D) -> int:
        """Function 0's answer: bit 0 plus a bit per function `device` offers at `revision`.

        Linux re-asks function 0 with each function's own revision, so a function appears
        only in the mask of the revision it is registered for. Nothing offered → 0.
        """
        mask = 0
        for (function, rev), entry in self._entries.items():
            if rev == revision and entry.available(device):
                mask |= 1 << function
        return mask | 1 if mask else 0

    def __iter__(self) -> Iterator[Entry[D]]:
        return iter(self._entries.values())
