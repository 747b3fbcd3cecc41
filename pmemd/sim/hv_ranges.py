"""Xen's `rangeset`: inclusive [start, end] ranges, merged when adjacent, with a node limit."""

from __future__ import annotations

import bisect
import errno

from pmemd.sim.errors import XenError

MAX_NR_IO_RANGES = 256  # per type per ioreq server (xen/common/ioreq.c)


class RangeSet:
    """Sorted disjoint inclusive ranges; adding beyond `limit` nodes fails like Xen (ENOMEM)."""

    def __init__(self, limit: int = MAX_NR_IO_RANGES) -> None:
        self.limit = limit
        self.ranges: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.ranges)

    def overlaps(self, start: int, end: int) -> bool:
        return any(s <= end and start <= e for s, e in self.ranges)

    def contains(self, start: int, end: int) -> bool:
        """True if [start, end] lies entirely inside one range."""
        i = bisect.bisect_right(self.ranges, (start, 1 << 64)) - 1
        return i >= 0 and self.ranges[i][0] <= start and end <= self.ranges[i][1]

    def add(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for s, e in sorted(self.ranges + [(start, end)]):
            if merged and s <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        if len(merged) > self.limit:
            raise XenError(errno.ENOMEM, f"more than {self.limit} ranges of this type")
        self.ranges = merged

    def remove(self, start: int, end: int) -> None:
        out: list[tuple[int, int]] = []
        for s, e in self.ranges:
            if e < start or end < s:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start - 1))
            if end < e:
                out.append((end + 1, e))
        if len(out) > self.limit:
            raise XenError(errno.ENOMEM, f"splitting would exceed {self.limit} ranges")
        self.ranges = out
