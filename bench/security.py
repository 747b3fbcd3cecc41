"""DIMM security timings: passphrase calls, crypto erase and overwrite of a real backing file.

Every `_DSM` call goes through `Dispatcher.dispatch` with real pages, as the guest's AML
makes them, with the real scrypt cost (N = 2^14, r = 8, p = 1). The erases write a real
backing file in a temporary directory (pass `--dir` to put it on the filesystem you care
about; the default is the system's temporary directory) through the daemon's own stores:
`FilePmemStore` for the PMEM and `FileLabelStore` (journalled, durable) for the labels. The
overwrite runs in the daemon's overwriter task under trio, polled with function 26 as Linux
does, and is timed from function 25's reply to function 26's success.

    .venv/bin/python bench/security.py [--pmem-mib 256] [--dir DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmemd.config import from_mapping
from pmemd.daemon.atomic import HeldFile
from pmemd.daemon.label_file import open_label_stores
from pmemd.daemon.pmem_file import open_pmem_stores
from pmemd.daemon.security_service import SecurityService
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.dispatcher import Phase
from pmemd.dsm.page import decode_reply, encode_request
from pmemd.dsm.security import SecurityStatus

LABELS = 2 << 20
P1, P2, WRONG, ZERO = b"\x11" * 32, b"\x22" * 32, b"\x99" * 32, bytes(32)


def status(dispatcher, function: int, payload: bytes = b"") -> int:
    reply = decode_reply(dispatcher.dispatch(encode_request(1, 2, function, payload)))
    return int.from_bytes(reply[:4], "little")


def timed(repeat: int, call) -> tuple[float, float]:
    """(median, max) in milliseconds."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), max(samples)


def check(got: int, want: int, what: str) -> None:
    if got != want:
        raise SystemExit(f"{what}: status {got:#x}, expected {want:#x}")


async def overwrite(handlers, service: SecurityService) -> float:
    """Seconds from fn 25's reply to fn 26's success, polling every millisecond."""
    dispatcher = handlers.dispatcher
    with dispatcher.observing(Phase.EFFECTS, service.after_call):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            t0 = time.perf_counter()
            check(status(dispatcher, 25, ZERO), SecurityStatus.SUCCESS, "overwrite")
            while (s := status(dispatcher, 26)) == SecurityStatus.OVERWRITE_IN_PROGRESS:  # noqa: ASYNC110
                await trio.sleep(0.001)
            elapsed = time.perf_counter() - t0
            check(s, SecurityStatus.SUCCESS, "query overwrite")
            nursery.cancel_scope.cancel()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pmem-mib", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pmem = args.pmem_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        backing = Path(tmp) / "nv0.img"
        with backing.open("wb") as f:
            for _ in range((pmem + LABELS) >> 20):
                f.write(b"\xee" * (1 << 20))
        config = from_mapping({"domid": 1, "nvdimm": [{"backing": str(backing), "size": pmem + LABELS,
                                                         "label_size": LABELS}]}, base_dir=Path(tmp))
        labels = open_label_stores(config, stack)
        handlers = build_dispatcher(config, labels, pmem=open_pmem_stores(config, stack))
        dispatcher = handlers.dispatcher
        held = HeldFile(Path(tmp) / "nv0.img.pmemd-security")
        stack.callback(held.close)
        service = SecurityService(handlers.dimms, labels, {0: held})

        print(f"security bench: one Intel DIMM, {args.pmem_mib} MiB PMEM + 2 MiB labels in {tmp}")
        print(f"  get state (fn 19)                     {timed(args.repeat, lambda: status(dispatcher, 19))[0]:9.3f} ms")
        old = [ZERO]

        def set_passphrase() -> None:
            new = P1 if old[0] != P1 else P2
            check(status(dispatcher, 20, old[0] + new), SecurityStatus.SUCCESS, "set passphrase")
            old[0] = new

        med, worst = timed(args.repeat, set_passphrase)
        print(f"  set passphrase (fn 20)                {med:9.3f} ms  (max {worst:.3f})")
        med, worst = timed(1, lambda: service.save(0))
        print(f"  security file save (durable)          {med:9.3f} ms")
        handlers.dimms[0].security.power_on()
        med, worst = timed(1, lambda: check(status(dispatcher, 22, WRONG), SecurityStatus.INVALID_PASSPHRASE, "wrong"))
        print(f"  wrong passphrase (fn 22, refused)     {med:9.3f} ms")
        handlers.dimms[0].security.power_on()  # clear the attempt count
        med, worst = timed(1, lambda: check(status(dispatcher, 22, old[0]), SecurityStatus.SUCCESS, "unlock"))
        print(f"  unlock (fn 22)                        {med:9.3f} ms")
        med, _ = timed(1, lambda: check(status(dispatcher, 24, old[0]), SecurityStatus.SUCCESS, "secure erase"))
        if backing.read_bytes()[:pmem] != bytes(pmem):
            raise SystemExit("secure erase left data behind")
        print(f"  secure erase (fn 24, {args.pmem_mib} MiB, fdatasync) {med:9.3f} ms  "
              f"({args.pmem_mib / (med / 1e3):.0f} MiB/s)")
        with backing.open("r+b") as f:
            f.write(b"\xee" * (1 << 20))
        seconds = trio.run(overwrite, handlers, service)
        if backing.read_bytes() != bytes(pmem + LABELS):
            raise SystemExit("overwrite left data behind")
        print(f"  overwrite (fn 25 → 26 done, {args.pmem_mib} MiB + labels) {seconds * 1e3:9.3f} ms  "
              f"({(pmem + LABELS) / (1 << 20) / seconds:.0f} MiB/s)")


if __name__ == "__main__":
    main()
