"""A domain's physmap (Xen's p2m) as an interval map: gfn runs typed RAM, MMIO or pmem.

Xen keeps one p2m entry per 4 KiB page; the simulator keeps runs, because a pmem run is a
contiguous gfn range backed by a contiguous mfn range (the device model coalesces them),
and RAM and the MMIO hole are fixed by the domain's layout. The same `IntervalMap` keys
the host's pmem frame ownership by mfn (`hv_pmem`).

Rules (XENMEM_populate_pmem_map, reference §2.3): a pmem run may not overlap RAM, the
MMIO hole, an ioreq server's MMIO range or another mapping (EEXIST). There is no unmap:
pmem runs go only when the domain is destroyed (`release_pmem`).
"""

from __future__ import annotations

import bisect
import enum
import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from pmemd.sim.errors import XenError
from pmemd.xen.page import PAGE_SHIFT

FOUR_GIB_GFN = (1 << 32) >> PAGE_SHIFT
MAX_GFN = 1 << (48 - PAGE_SHIFT)  # guest physical address width the simulator accepts

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Interval(Generic[V]):
    """[start, start + nr) carrying `value`."""

    start: int
    nr: int
    value: V

    @property
    def end(self) -> int:
        return self.start + self.nr


class IntervalMap(Generic[V]):
    """Disjoint half-open intervals kept sorted by start; lookups are O(log n)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._items: list[Interval[V]] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Interval[V]]:
        return iter(list(self._items))

    def find(self, point: int) -> Interval[V] | None:
        """The interval holding `point`, if any."""
        i = bisect.bisect_right(self._starts, point) - 1
        if i >= 0 and point < self._items[i].end:
            return self._items[i]
        return None

    def first_overlap(self, start: int, nr: int) -> Interval[V] | None:
        """The lowest interval meeting [start, start + nr), if any."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and start < self._items[i].end:
            return self._items[i]
        i += 1
        if i < len(self._items) and self._items[i].start < start + nr:
            return self._items[i]
        return None

    def add(self, start: int, nr: int, value: V) -> Interval[V]:
        """Insert a run; the caller has checked it overlaps nothing (asserted)."""
        assert nr > 0 and self.first_overlap(start, nr) is None, "overlapping interval"
        i = bisect.bisect_left(self._starts, start)
        item = Interval(start, nr, value)
        self._starts.insert(i, start)
        self._items.insert(i, item)
        return item

    def remove_if(self, selected: Callable[[Interval[V]], bool]) -> list[Interval[V]]:
        """Drop every interval the predicate selects; return them."""
        dropped = [item for item in self._items if selected(item)]
        if dropped:
            self._items = [item for item in self._items if not selected(item)]
            self._starts = [item.start for item in self._items]
        return dropped


class MapType(enum.Enum):
    RAM = "ram"
    MMIO = "mmio"
    PMEM = "pmem"


@dataclass(frozen=True, slots=True)
class Mapping:
    """What a physmap run is; `mfn` is the host frame of the run's first gfn (pmem only)."""

    type: MapType
    mfn: int | None = None


class Physmap:
    """One domain's gfn space: RAM and the MMIO hole from its layout, pmem runs added later."""

    def __init__(self, lowmem: int, highmem: int, mmio_hole: int) -> None:
        self.runs: IntervalMap[Mapping] = IntervalMap()
        self.runs.add(0, lowmem >> PAGE_SHIFT, Mapping(MapType.RAM))
        hole = mmio_hole >> PAGE_SHIFT
        if hole:
            self.runs.add(FOUR_GIB_GFN - hole, hole, Mapping(MapType.MMIO))
        if highmem:
            self.runs.add(FOUR_GIB_GFN, highmem >> PAGE_SHIFT, Mapping(MapType.RAM))

    def check_free(self, gfn: int, nr: int) -> None:
        """Refuse (EEXIST) a gfn range meeting RAM, the MMIO hole or another mapping."""
        if nr < 1 or gfn < 0 or gfn + nr > MAX_GFN:
            raise XenError(errno.EINVAL, f"gfns {gfn:#x}+{nr:#x} are outside the guest physical space")
        hit = self.runs.first_overlap(gfn, nr)
        if hit is not None:
            what = {MapType.RAM: "guest RAM", MapType.MMIO: "the MMIO hole", MapType.PMEM: "a pmem mapping"}
            raise XenError(
                errno.EEXIST,
                f"gfns [{gfn:#x}, {gfn + nr:#x}) overlap {what[hit.value.type]} at gfns [{hit.start:#x}, {hit.end:#x})",
            )

    def add_pmem(self, gfn: int, mfn: int, nr: int) -> None:
        self.check_free(gfn, nr)
        self.runs.add(gfn, nr, Mapping(MapType.PMEM, mfn))

    def pmem_mfn(self, gfn: int) -> int | None:
        """The host frame behind `gfn` if it is pmem-mapped."""
        run = self.runs.find(gfn)
        if run is None or run.value.type is not MapType.PMEM:
            return None
        assert run.value.mfn is not None
        return run.value.mfn + gfn - run.start

    def pmem_runs(self) -> list[tuple[int, int, int]]:
        """Every pmem run as (gfn, mfn, nr), in gfn order."""
        return [(r.start, r.value.mfn, r.nr) for r in self.runs if r.value.type is MapType.PMEM]  # type: ignore[misc]

    def release_pmem(self) -> list[tuple[int, int, int]]:
        """Drop every pmem run (domain destruction); return them as (gfn, mfn, nr)."""
        dropped = self.runs.remove_if(lambda r: r.value.type is MapType.PMEM)
        return [(r.start, r.value.mfn, r.nr) for r in dropped]  # type: ignore[misc]
