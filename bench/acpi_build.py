"""Benchmark: building the NFIT and the SSDT for 1, 16 and 256 DIMMs.

    .venv/bin/python bench/acpi_build.py [--runs N] [--profile]

Each case builds both tables from `acpi.layout.Dimm` lists (what `pmemd.daemon.tables.build_tables`
does for a config) and reports the median of N runs in milliseconds, per table and
together. Target: NFIT + SSDT for 256 DIMMs in ≤ 20 ms. With --profile (or when the
target is missed) the 256-DIMM build is run under cProfile and the top functions by
cumulative and by own time are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable

from acpi.layout import Dimm, DsmPage
from acpi.nfit import build_nfit
from acpi.ssdt import build_ssdt

GiB = 1 << 30
MiB = 1 << 20
TARGET_MS = 20.0
COUNTS = (1, 16, 256)
PAGE = DsmPage(address=0xFBFFF000, notify_port=0x0A18)


def dimms(n: int) -> list[Dimm]:
    """n DIMMs of 1 GiB above 8 GiB, on 4 nodes, every 8th unarmed, every other with a flush hint."""
    return [
        Dimm(
            slot=s,
            address=8 * GiB + s * GiB,
            size=GiB,
            node=s % 4,
            unarmed=s % 8 == 7,
            serial=0x504D0000 + s,
            flush_hint=0xF8000000 + 8 * s if s % 2 == 0 else None,
        )
        for s in range(n)
    ]


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm caches (construct compiles nothing lazily, but imports and allocators do)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def profile(ds: list[Dimm], top: int = 15) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    build_nfit(ds, "cpu")
    build_ssdt(ds, PAGE)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per case (median reported)")
    parser.add_argument("--profile", action="store_true", help="always profile the 256-DIMM build")
    args = parser.parse_args()

    print(f"{'DIMMs':>6} {'NFIT ms':>9} {'SSDT ms':>9} {'both ms':>9} {'NFIT B':>8} {'SSDT B':>8}")
    results = {}
    for n in COUNTS:
        ds = dimms(n)
        nfit_ms = median_ms(lambda ds=ds: build_nfit(ds, "cpu"), args.runs)
        ssdt_ms = median_ms(lambda ds=ds: build_ssdt(ds, PAGE), args.runs)
        both_ms = median_ms(lambda ds=ds: (build_nfit(ds, "cpu"), build_ssdt(ds, PAGE)), args.runs)
        results[n] = both_ms
        print(
            f"{n:>6} {nfit_ms:>9.2f} {ssdt_ms:>9.2f} {both_ms:>9.2f} "
            f"{len(build_nfit(ds, 'cpu')):>8} {len(build_ssdt(ds, PAGE)):>8}"
        )
    met = results[256] <= TARGET_MS
    print(f"target: NFIT+SSDT for 256 DIMMs <= {TARGET_MS:.0f} ms: "
          f"{'met' if met else 'MISSED'} ({results[256]:.2f} ms, median of {args.runs})")
    if args.profile or not met:
        print()
        print(profile(dimms(256)))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
