"""Poisoned guest SPA ranges: a bounded, coalesced interval set with a saved form.

Ranges are half-open [start, end) byte ranges in guest system-physical-address terms, kept
sorted, disjoint and non-adjacent (touching ranges merge on insert, a clear in the middle
splits one). Every source of poison — guest injection (root fn 7), the operator, host bad
blocks — lands here, and ARS (root fn 3) reports from here.

The count of ranges is bounded: a guest could otherwise grow the daemon's memory one
injection (or one mid-range clear) at a time. An operation that would pass the bound raises
`PoisonLimitError` and changes nothing.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from construct import Array, Int32ul, Int64ul, Struct, Terminated, this

from .state_blob import StateFormatError, parse_body, unwrap, wrap

U64_LIMIT = 1 << 64
DEFAULT_MAX_RANGES = 1 << 18
"""262144 ranges (~20 MiB of Python ints at most): far beyond any real DIMM's error list."""

BLOB_KIND = b"POIS"
BLOB_VERSION = 1

PoisonBodyV1 = Struct(
    "count" / Int32ul,
    "bounds" / Array(this.count * 2, Int64ul),  # start, length, start, length, ... (flat: 8x faster than a Struct per range)
    Terminated,
)
"""Version 1 body: the ranges as (start, length) u64 pairs, in ascending order."""


class PoisonLimitError(Exception):
    """The operation would leave more poisoned ranges than the set's bound allows."""


class PoisonSet:
    """Poisoned [start, end) ranges, sorted and coalesced, at most `max_ranges` of them."""

    def __init__(self, max_ranges: int = DEFAULT_MAX_RANGES) -> None:
        if max_ranges < 1:
            raise ValueError("max_ranges must be at least 1")
        self.max_ranges = max_ranges
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.version = 0
        """Bumped by every change: lets a consumer (the vMCE publisher) skip unchanged sets cheaply."""

    # -- changes ---------------------------------------------------------------------------

    def add(self, start: int, length: int) -> None:
        """Poison [start, start + length), merging with ranges it overlaps or touches.

        Errors: `ValueError` for an empty or out-of-u64 range; `PoisonLimitError` at the bound.
        """
        end = _end(start, length)
        i, j = self._touching(start, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._check_count(len(self._starts) - (j - i) + 1)
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]
        self.version += 1

    def remove(self, start: int, length: int) -> None:
        """Unpoison [start, start + length), splitting a range that straddles it.

        Errors: `ValueError` for an empty or out-of-u64 range; `PoisonLimitError` if a split
        would pass the bound (nothing is cleared then).
        """
        end = _end(start, length)
        i = bisect_right(self._ends, start)  # first range ending after `start`
        j = bisect_left(self._starts, end)  # ranges starting before `end`
        if i >= j:
            return
        starts: list[int] = []
        ends: list[int] = []
        if self._starts[i] < start:
            starts.append(self._starts[i])
            ends.append(start)
        if self._ends[j - 1] > end:
            starts.append(end)
            ends.append(self._ends[j - 1])
        self._check_count(len(self._starts) - (j - i) + len(starts))
        self._starts[i:j] = starts
        self._ends[i:j] = ends
        self.version += 1

    def fits(self, start: int, length: int) -> bool:
        """Whether `add(start, length)` would stay within the bound (to add to two sets or none)."""
        i, j = self._touching(start, _end(start, length))
        return len(self._starts) - (j - i) + 1 <= self.max_ranges

    def _touching(self, start: int, end: int) -> tuple[int, int]:
        """Index span of the ranges overlapping or adjacent to [start, end)."""
        return bisect_left(self._ends, start), bisect_right(self._starts, end)

    def clear(self) -> None:
        """Forget every range."""
        self._starts.clear()
        self._ends.clear()
        self.version += 1

    # -- queries ---------------------------------------------------------------------------

    def overlapping(self, start: int, end: int, limit: int | None = None) -> list[tuple[int, int]]:
        """(start, length) of the ranges meeting [start, end), clipped to it, in order; at most `limit`."""
        i = bisect_right(self._ends, start)
        j = bisect_left(self._starts, end)
        if limit is not None:
            j = min(j, i + limit)
        return [
            (max(s, start), min(e, end) - max(s, start))
            for s, e in zip(self._starts[i:j], self._ends[i:j])
        ]

    def nth_start(self, start: int, end: int, n: int) -> int | None:
        """Where the `n`th (0-based) range meeting [start, end) begins, clipped to `start`; None if fewer."""
        i = bisect_right(self._ends, start) + n
        if i >= len(self._starts) or self._starts[i] >= end:
            return None
        return max(self._starts[i], start)

    def covers(self, address: int) -> bool:
        """Whether the byte at `address` is poisoned."""
        i = bisect_right(self._starts, address) - 1
        return i >= 0 and address < self._ends[i]

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(start, length) of every range, ascending."""
        return ((s, e - s) for s, e in zip(self._starts, self._ends))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PoisonSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __repr__(self) -> str:
        return f"PoisonSet({[(hex(s), n) for s, n in self]!r}, max_ranges={self.max_ranges})"

    # -- saved form ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The versioned blob (`state_blob` envelope, kind b"POIS") holding every range."""
        bounds = [x for pair in self for x in pair]
        return wrap(BLOB_KIND, BLOB_VERSION, PoisonBodyV1.build({"count": len(self), "bounds": bounds}))

    @classmethod
    def from_bytes(cls, blob: bytes, max_ranges: int = DEFAULT_MAX_RANGES) -> PoisonSet:
        """The set a `to_bytes` blob describes.

        Errors: `StateFormatError` for a corrupt or newer blob, unordered or overlapping
        ranges, or more ranges than `max_ranges`.
        """
        _, body = unwrap(BLOB_KIND, BLOB_VERSION, blob)
        parsed = parse_body(PoisonBodyV1, body)
        if parsed.count > max_ranges:
            raise StateFormatError(f"{parsed.count} poisoned ranges exceed the bound of {max_ranges}")
        result = cls(max_ranges)
        previous_end = -1
        bounds = parsed.bounds
        for k in range(0, len(bounds), 2):
            start, length = bounds[k], bounds[k + 1]
            if length == 0 or start + length > U64_LIMIT or start <= previous_end:
                raise StateFormatError(f"poison range {k // 2} ({start:#x}, {length:#x}) is empty, unordered or overlapping")
            result._starts.append(start)
            result._ends.append(start + length)
            previous_end = start + length
        return result

    def _check_count(self, count: int) -> None:
        if count > self.max_ranges:
            raise PoisonLimitError(f"{count} poisoned ranges would exceed the bound of {self.max_ranges}")


def _end(start: int, length: int) -> int:
    if length <= 0 or start < 0 or start + length > U64_LIMIT:
        raise ValueError(f"range ({start:#x}, {length:#x}) is empty or leaves the 64-bit address space")
    return start + length
