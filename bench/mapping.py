"""Benchmark: the storage pipeline from extents to populate calls, in time and memory.

    .venv/bin/python bench/mapping.py [--dir DIR] [--file-pages N] [--synthetic N]

(a) a real file fragmented to one extent per page (FIEMAP → validate → fingerprint →
frames → coalesce → sink); (b) a synthetic source of N extents, and N/10 to show memory
stays flat as the count grows 10×. Targets: ≥ 500 000 extents/s synthetic; RSS growth
≤ 16 MiB and flat. Peak RSS is reset between cases (clear_refs 5) so each is measured alone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import trio

from pmemd.storage import FileExtents, HostPmem, Placement, populate_backing
from pmemd.storage.extents import ExtentSource
from pmemd.storage.fiemap import fiemap_extents
from pmemd.storage.testing import CountingSink, SyntheticExtents, make_fragmented

PAGE = 4096
KiB = 1024


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Make VmHWM start again from the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def measure(label: str, source: ExtentSource, size: int) -> None:
    host = HostPmem("bench", 0, 0, 1 << 50)
    sink = CountingSink()
    exact = reset_peak()
    before = status_kib("VmRSS")
    start = time.perf_counter()
    report = await populate_backing(source, sink, host, Placement(1 << 40, size, size))
    elapsed = time.perf_counter() - start
    growth = status_kib("VmHWM") - before
    print(
        f"{label:<34} {report.extents:>10,} extents {elapsed:8.3f} s {report.extents / elapsed:>12,.0f} extents/s"
        f"   {sink.calls:>10,} calls   peak RSS growth {growth / KiB:6.2f} MiB{'' if exact else ' (HWM not reset)'}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the fragmented file (default: a temp dir)")
    parser.add_argument("--file-pages", type=int, default=20_480, help="pages (= extents) of the fragmented file")
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="extents of the largest synthetic stream")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "fragmented.img"
        start = time.perf_counter()
        make_fragmented(path, args.file_pages)
        fd = os.open(path, os.O_RDONLY)
        try:
            count = sum(1 for _ in fiemap_extents(fd))
        finally:
            os.close(fd)
        print(f"built {path} ({args.file_pages * PAGE >> 20} MiB): FIEMAP shows {count:,} extents "
              f"[{time.perf_counter() - start:.1f} s]")
        size = args.file_pages * PAGE
        await measure("(a) real file, FIEMAP SYNC", FileExtents(path, size), size)

    for count in (args.synthetic // 10, args.synthetic):
        source = SyntheticExtents(count)
        await measure("(b) synthetic, no coalescing", source, source.size)
    source = SyntheticExtents(args.synthetic, stride=1)
    await measure("(b) synthetic, all coalesce", source, source.size)

    # Control: the same meter on a pipeline that holds its extents (what we must not do).
    reset_peak()
    before = status_kib("VmRSS")
    held = list(SyntheticExtents(args.synthetic // 10).extents())
    print(f"control: a list of {len(held):,} extents grows peak RSS by "
          f"{(status_kib('VmHWM') - before) / KiB:.2f} MiB")


if __name__ == "__main__":
    trio.run(main)
