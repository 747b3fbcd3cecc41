"""Address Range Scrub as a pure model: a scrub's progress is a function of an injected clock.

A scrub sweeps [address, address + length) at `rate` bytes/s. It stops early — "interrupted,
overflow" — where the next error would no longer fit one ARS status reply (`max_records`),
and reports a restart address there, so the guest continues with a new ARS start (linux-nfit.md
§5, `ars_continue`). Sweeping to the overflow point takes time in proportion, so paging
through a long error list costs the same total time as one uninterrupted sweep.

Nothing here sleeps or keeps a timer: a handler passes `now`, and a scrub whose deadline has
passed is settled — its records taken from the poison set — on the first look after it.
Records are therefore what the sweep finds at settle time. "Return previous data" starts
(flags 0x02, Linux's short ARS) settle at once: the daemon's poison list *is* the platform's
record of errors already found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .poison import PoisonSet
from .root_layouts import MAX_ARS_RECORDS

GiB = 1 << 30
DEFAULT_SCRUB_RATE = float(GiB)
"""Bytes per second: a 16 GiB DIMM takes 16 s, comparable to the 1 s+ polls Linux makes."""


@dataclass(frozen=True)
class ScrubResult:
    """What ARS status reports for a settled scrub."""

    address: int
    length: int
    type: int
    records: tuple[tuple[int, int], ...]  # (err_address, length), clipped to the range
    restart_address: int  # 0 with restart_length 0 when the sweep reached the end
    restart_length: int

    @property
    def overflowed(self) -> bool:
        """The sweep stopped before the end of the range: continue from `restart_address`."""
        return self.restart_length > 0


@dataclass
class Scrub:
    """One started scrub; `result` is None until it settles."""

    seq: int
    address: int
    length: int
    type: int
    previous_data: bool
    started_at: float
    deadline: float
    stop: int  # where the sweep ends: the range's end, or the first error that will not fit
    result: ScrubResult | None = None

    @property
    def end(self) -> int:
        return self.address + self.length


class ArsState:
    """The root device's scrub engine: at most one scrub at a time, the last one's result kept."""

    def __init__(self, rate: float = DEFAULT_SCRUB_RATE, max_records: int = MAX_ARS_RECORDS) -> None:
        if rate <= 0:
            raise ValueError("scrub rate must be positive")
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.rate = rate
        self.max_records = max_records
        self.current: Scrub | None = None
        self._seq = 0

    def busy(self, now: float) -> bool:
        """Whether a scrub is still sweeping (a new start is refused, status reads busy)."""
        return self.current is not None and self.current.result is None and now < self.current.deadline

    def start(self, poison: PoisonSet, address: int, length: int, scrub_type: int, previous_data: bool, now: float) -> Scrub:
        """Begin a scrub of [address, address + length); the caller has checked range and `busy`."""
        end = address + length
        stop = poison.nth_start(address, end, self.max_records)
        if stop is None:
            stop = end
        duration = 0.0 if previous_data else (stop - address) / self.rate
        self._seq += 1
        self.current = Scrub(self._seq, address, length, scrub_type, previous_data, now, now + duration, stop)
        if previous_data:
            self.settle(poison, now)
        return self.current

    def settle(self, poison: PoisonSet, now: float) -> ScrubResult | None:
        """The current scrub's result, settling it if its deadline has passed; None if busy or none."""
        scrub = self.current
        if scrub is None:
            return None
        if scrub.result is None:
            if now < scrub.deadline:
                return None
            scrub.result = _sweep(poison, scrub, self.max_records)
        return scrub.result

    def estimated_seconds(self, scrub: Scrub, now: float) -> int:
        """ARS start's `scrub_time`: whole seconds until the sweep ends (u32)."""
        return min(math.ceil(max(0.0, scrub.deadline - now)), 0xFFFFFFFF)


def _sweep(poison: PoisonSet, scrub: Scrub, max_records: int) -> ScrubResult:
    records = poison.overlapping(scrub.address, scrub.stop, limit=max_records + 1)
    stop = scrub.stop
    if len(records) > max_records:  # new errors appeared in the swept part since the start
        stop = records[max_records][0]
        records = records[:max_records]
    restart_length = scrub.end - stop
    return ScrubResult(
        scrub.address,
        scrub.length,
        scrub.type,
        tuple(records),
        stop if restart_length else 0,
        restart_length,
    )


@dataclass(frozen=True)
class ScrubCompleted:
    """One scrub settled: the range it covered, what it found, whether the guest must restart it."""

    seq: int
    address: int
    length: int
    records: int
    overflowed: bool
    previous_data: bool
    started_at: float
    finished_at: float
