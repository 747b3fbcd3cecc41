"""ARS at scale: a 1 TiB SPA with 100 000 poisoned ranges, paged out through status and restart.

Every call goes through `Dispatcher.dispatch` with real pages, as the guest's AML would make
them. The scrub clock is fake: when status reads busy the bench jumps the clock to the
scrub's deadline (Linux would poll), so the figures measure the daemon's work, and the
"virtual scrub time" is what the guest would wait at the configured rate.

    .venv/bin/python bench/ars.py [--ranges N] [--rate BYTES_PER_S]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

from construct import Int32ul

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmemd.config import TiB, from_mapping
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.page import decode_reply, encode_request
from pmemd.dsm.poison import PoisonSet
from pmemd.dsm.root_layouts import (
    ARS_STATUS_BUSY,
    ARS_STATUS_INTERRUPTED,
    ArsStartInput,
    ArsStatusOutput,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def start_page(address: int, length: int, flags: int) -> bytes:
    data = ArsStartInput.build(
        {"range": {"address": address, "length": length}, "type": 2, "flags": flags, "reserved": [0] * 5}
    )
    return encode_request(0, 1, 2, data)


STATUS_PAGE = encode_request(0, 1, 3)


def page_out(dispatcher, media: MediaErrors, clock: FakeClock, address: int, length: int, flags: int) -> dict[str, float]:
    """Linux's loop: start, status (busy → wait), overflow → restart; until done."""
    records = replies = starts = busy = 0
    per_reply: list[int] = []
    virtual_start = clock.t
    t0 = time.perf_counter()
    payload = decode_reply(dispatcher.dispatch(start_page(address, length, flags)))
    assert Int32ul.parse(payload[:4]) == 0
    starts += 1
    while True:
        payload = decode_reply(dispatcher.dispatch(STATUS_PAGE))
        status = Int32ul.parse(payload[:4])
        if status == ARS_STATUS_BUSY:
            busy += 1
            assert media.ars.current is not None
            clock.t = media.ars.current.deadline
            continue
        parsed = ArsStatusOutput.parse(payload[4:])
        replies += 1
        records += parsed.header.num_records
        per_reply.append(parsed.header.num_records)
        if status != ARS_STATUS_INTERRUPTED:
            break
        h = parsed.header
        payload = decode_reply(dispatcher.dispatch(start_page(h.restart_address, h.restart_length, 0)))
        assert Int32ul.parse(payload[:4]) == 0
        starts += 1
    return {
        "seconds": time.perf_counter() - t0,
        "records": records,
        "replies": replies,
        "starts": starts,
        "busy_polls": busy,
        "max_per_reply": max(per_reply),
        "virtual_seconds": clock.t - virtual_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranges", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=float(1 << 30), help="scrub rate, bytes/s (default 1 GiB/s)")
    args = parser.parse_args()

    config = from_mapping({"domid": 1, "nvdimm": [{"backing": "nv0.img", "size": TiB}]}, base_dir=Path("/nonexistent"))
    nvdimm = config.nvdimms[0]
    clock = FakeClock()
    media = MediaErrors.create(rate=args.rate, now=clock)
    dispatcher = build_dispatcher(config, {}, media=media).dispatcher

    stride = nvdimm.pmem_size // args.ranges
    starts = [nvdimm.address + i * stride for i in range(args.ranges)]
    random.Random(1).shuffle(starts)
    t0 = time.perf_counter()
    for s in starts:
        media.poison.add(s, 512)
    insert = time.perf_counter() - t0
    expected = args.ranges

    print(f"SPA: {nvdimm.pmem_size / TiB:.0f} TiB at {nvdimm.address:#x}; {len(media.poison)} poisoned ranges "
          f"(512 B every {stride} B); scrub rate {args.rate / (1 << 30):.1f} GiB/s")
    print(f"insert {args.ranges} ranges (random order): {insert:.3f} s ({insert / args.ranges * 1e6:.1f} µs each)")

    for name, flags in (("short (return previous data)", 0x02), ("long", 0x00)):
        clock.t += 1
        r = page_out(dispatcher, media, clock, nvdimm.address, nvdimm.pmem_size, flags)
        assert r["records"] == expected, r
        print(
            f"{name}: {r['records']:.0f} records in {r['replies']:.0f} status replies "
            f"(max {r['max_per_reply']:.0f}/reply), {r['starts']:.0f} starts, {r['busy_polls']:.0f} busy polls; "
            f"daemon time {r['seconds']:.3f} s ({r['seconds'] / r['replies'] * 1e3:.2f} ms/reply); "
            f"virtual scrub time {r['virtual_seconds']:.0f} s"
        )

    t0 = time.perf_counter()
    blob = media.to_bytes()
    saved = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = MediaErrors.create()
    restored.restore(blob)
    loaded = time.perf_counter() - t0
    assert restored.poison == media.poison
    print(f"saved form: {len(blob)} bytes; to_bytes {saved:.3f} s, restore {loaded:.3f} s")
    assert isinstance(restored.poison, PoisonSet)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS: {peak / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
