"""Guest RAM for data_is_ptr requests: foreign mappings in 1 MiB buckets (QEMU's mapcache).

`ensure()` (async: it may map) runs before a request executes; `read`/`write` are then
synchronous. Bytes outside guest RAM read as all-ones and writes to them are dropped,
as Xen does for a buffer pointing at nothing. IOREQ_TYPE_INVALIDATE calls `invalidate()`.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from pmemd.xen.api import DeviceModelHypervisor
from pmemd.xen.page import PAGE_SHIFT

log = structlog.get_logger("pmemd.ioreq.mapcache")

BUCKET_SHIFT = 20


class MapCache:
    def __init__(self, hv: DeviceModelHypervisor, ram_ranges: list[tuple[int, int]]) -> None:
        self.hv = hv
        self.ram_ranges = ram_ranges
        self.buckets: dict[int, tuple[int, memoryview]] = {}  # bucket -> (first gpa, view)

    def _ram_part(self, bucket: int) -> tuple[int, int] | None:
        lo, hi = bucket << BUCKET_SHIFT, (bucket + 1) << BUCKET_SHIFT
        for start, end in self.ram_ranges:
            s, e = max(lo, start), min(hi, end)
            if s < e:
                return s, e
        return None

    async def ensure(self, lo: int, hi: int) -> None:
        """Map every bucket of guest RAM that [lo, hi) touches."""
        for bucket in range(lo >> BUCKET_SHIFT, ((hi - 1) >> BUCKET_SHIFT) + 1):
            if bucket in self.buckets:
                continue
            part = self._ram_part(bucket)
            if part is not None:
                s, e = part
                view = await self.hv.map_foreign(s >> PAGE_SHIFT, (e - s) >> PAGE_SHIFT)
                self.buckets[bucket] = (s, view)

    def _chunks(self, gpa: int, n: int) -> Iterator[tuple[memoryview | None, int]]:
        while n > 0:
            bucket = gpa >> BUCKET_SHIFT
            take = min(n, ((bucket + 1) << BUCKET_SHIFT) - gpa)
            entry = self.buckets.get(bucket)
            if entry is not None and entry[0] <= gpa and gpa + take <= entry[0] + len(entry[1]):
                yield entry[1][gpa - entry[0] : gpa - entry[0] + take], take
            else:
                yield None, take
            gpa += take
            n -= take

    def read(self, gpa: int, n: int) -> bytes:
        out = bytearray()
        for view, take in self._chunks(gpa, n):
            out += bytes(view) if view is not None else b"\xff" * take
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        pos = 0
        for view, take in self._chunks(gpa, len(data)):
            if view is not None:
                view[:] = data[pos : pos + take]
            else:
                log.warning("data_is_ptr write outside guest RAM dropped", gpa=gpa + pos, n=take)
            pos += take

    def invalidate(self) -> None:
        for _, view in self.buckets.values():
            view.release()
        self.buckets.clear()
