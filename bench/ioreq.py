"""The ioreq path's figures, from one run: channel, daemon round trip, _DSM calls in both modes.

    .venv/bin/python bench/ioreq.py [N] [--round-trips-only]   (N round trips per round; default 5000)

What is measured (every figure is the best of ROUNDS interleaved rounds, so a noisy
neighbour slows a round, not the result):

1. raw channel: two processes ping-pong 4 bytes over a socketpair with blocking reads —
   the floor any event-channel round trip is compared with.
2. daemon ioreq round trip: this process runs the simulated hypervisor (embedded) and
   injects 8-byte MMIO reads of the DSM page on vCPU 0, as a trapping vCPU would; the real
   daemon (`pmemd run`, its own process) serves them through its ioreq server and the DSM
   page device. One round trip = slot filled, port notified, served by the daemon,
   IORESP_READY notified back, completed — the same two channel messages the raw ping-pong
   sends. Target: <= 1.5x the raw round-trip time.
3. _DSM calls (function 0, and a 4 KiB label read: one 4072-byte chunk, the max transfer)
   in `mmio` and `ram` mode:
   - sim-side: the call's access plan (`acpi.dsm_buffer`) injected in this process, as
     the vCPU's traps reach the hypervisor — the daemon's DSM call rate;
   - guest process: `pmemd.sim.guest_driver.Guest` in its own process, each access a
     socket round trip to the simulator — the end-to-end rate a scripted guest sees.
   with the ioreqs (traps) each call causes. Target: `ram` mode label read = 1 trap.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import structlog
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from acpi import dsm_buffer as page  # noqa: E402
from pmemd.ioreq import abi  # noqa: E402
from pmemd.sim.ioreq import Request  # noqa: E402

ROUNDS = 7
LABEL_SIZE = 128 * 1024
MAX_TRANSFER = 4072
CALLS = {  # name -> (handle, function, input)
    "function 0": (1, 0, b""),
    "4 KiB label read": (1, 5, (0).to_bytes(4, "little") + MAX_TRANSFER.to_bytes(4, "little")),
}
GUEST_LINES = {
    "function 0": {"dimm": 0, "function": 0},
    "4 KiB label read": {"dimm": 0, "function": 5, "arg3": CALLS["4 KiB label read"][2].hex()},
}


def quiet() -> None:
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# -- 1. the raw channel ------------------------------------------------------------------


class RawPingPong:
    """A forked child echoing 4-byte messages on a socketpair; `round(n)` times n round trips."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            fd = child.fileno()
            while (data := os.read(fd, 4)) and data != b"stop":
                os.write(fd, data)
            os._exit(0)
        child.close()

    def round(self, n: int) -> float:
        fd, msg = self.sock.fileno(), b"\x01\x00\x00\x00"
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(fd, msg)
            os.read(fd, 4)
        return time.perf_counter() - t0

    def close(self) -> None:
        os.write(self.sock.fileno(), b"stop")
        os.waitpid(self.pid, 0)
        self.sock.close()


# -- the host: embedded simulator, real daemons ------------------------------------------


def write_config(workdir: Path, domid: int, mode: str, socket_path: str) -> Path:
    backing = workdir / f"dom{domid}-nv0.img"
    with open(backing, "wb") as f:
        f.truncate(2 * 1024 * 1024 + LABEL_SIZE)
    config = workdir / f"dom{domid}.toml"
    config.write_text(
        f'domid = {domid}\n[guest]\nlowmem = "16M"\nvcpus = 1\n[dsm]\nmode = "{mode}"\n'
        f'[xen]\nhypervisor = "{socket_path}"\n[qmp]\nsocket = "{workdir / f"dom{domid}.qmp"}"\n'
        f'[[nvdimm]]\nbacking = "{backing}"\nsize = {2 * 1024 * 1024 + LABEL_SIZE}\nlabel_size = {LABEL_SIZE}\n'
    )
    return config


async def start_daemon(config: Path) -> trio.Process:
    """`pmemd run`, returned once it logged "running" (its later log lines are drained)."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pmemd.cli", "run", "--config", str(config)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    buf = b""
    while not any(json.loads(line or b"{}").get("event") == "running" for line in buf.splitlines()
                  if line.startswith(b"{")):
        chunk = await proc.stderr.receive_some()
        if not chunk:
            raise RuntimeError(f"pmemd run exited before running:\n{buf.decode()}")
        buf += chunk
    return proc


async def drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


# -- 2. the daemon's ioreq round trip --------------------------------------------------------


async def ioreq_round(dom, base: int, n: int) -> float:
    read = Request(abi.IOREQ_TYPE_COPY, base, 0, 1, 8, abi.IOREQ_READ, False, False)
    t0 = time.perf_counter()
    for _ in range(n):
        await dom.access(0, read)
    return time.perf_counter() - t0


# -- 3. _DSM calls ---------------------------------------------------------------------------------


async def sim_call(dom, base: int, port: int, handle: int, function: int, arg3: bytes) -> int:
    """One _DSM call's accesses (acpi.dsm_buffer's plan) on vCPU 0; returns the traps it caused."""
    request = handle.to_bytes(4, "little") + (1).to_bytes(4, "little") + function.to_bytes(4, "little")
    request += len(arg3).to_bytes(4, "little") + arg3
    traps = 0
    for a in page.request_accesses(len(arg3)):
        if a.space == "io":
            req = Request(abi.IOREQ_TYPE_PIO, port, base & 0xFFFFFFFF, 1, a.width, abi.IOREQ_WRITE, False, False)
        else:
            value = int.from_bytes(request[a.offset : a.offset + a.width].ljust(a.width, b"\0"), "little")
            req = Request(abi.IOREQ_TYPE_COPY, base + a.offset, value, 1, a.width, abi.IOREQ_WRITE, False, False)
        traps += (await dom.access(0, req))[1]
    head = Request(abi.IOREQ_TYPE_COPY, base, 0, 1, 8, abi.IOREQ_READ, False, False)
    value, trapped = await dom.access(0, head)
    traps += trapped
    for a in page.reply_accesses(value & 0xFFFFFFFF):
        if a.offset != page.REPLY_LENGTH_OFFSET:
            req = Request(abi.IOREQ_TYPE_COPY, base + a.offset, 0, 1, a.width, abi.IOREQ_READ, False, False)
            traps += (await dom.access(0, req))[1]
    return traps


async def sim_calls(dom, cfg, call: tuple[int, int, bytes], n: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    for _ in range(n):
        traps = await sim_call(dom, cfg.dsm.page, cfg.dsm.notify_port, *call)
    return time.perf_counter() - t0, traps


def guest_process_main(config: str, name: str, n: int) -> None:
    """Child: n calls through the guest driver; prints seconds and the last call's ioreqs."""
    from pmemd import config as configmod
    from pmemd.sim.guest_driver import Guest

    cfg = configmod.load(config)
    guest = Guest(cfg, cfg.xen.hypervisor)
    call = guest.parse_call(GUEST_LINES[name])
    for _ in range(max(1, n // 10)):
        guest.call(call)
    t0 = time.perf_counter()
    for _ in range(n):
        result = guest.call(call)
    print(json.dumps({"seconds": time.perf_counter() - t0, "ioreqs": result.ioreqs, "status": result.status}))
    guest.close()


async def guest_calls(config: Path, name: str, n: int) -> tuple[float, int]:
    proc = await trio.run_process(
        [sys.executable, __file__, "--guest", str(config), name, str(n)], capture_stdout=True, cwd=REPO
    )
    result = json.loads(proc.stdout)
    assert result["status"] == (0 if CALLS[name][1] else 0x477), result  # label read ok / the DIMM's mask
    return result["seconds"], result["ioreqs"]


# -- the run --------------------------------------------------------------------------------------


async def measure(hv, workdir: Path, sock: str, n: int, with_calls: bool, nursery: trio.Nursery,
                  daemons: list[trio.Process]) -> list[str]:
    from pmemd import config as configmod
    from pmemd.sim.hv_domain import Layout

    doms, cfgs = {}, {}
    for domid, mode in ((1, "mmio"), (2, "ram")):
        path = write_config(workdir, domid, mode, sock)
        cfgs[mode] = (path, configmod.load(path))
        doms[mode] = hv.create_domain(domid, Layout(16 << 20, 0, 256 << 20, 1))
        daemon = await start_daemon(path)
        daemons.append(daemon)
        nursery.start_soon(drain, daemon.stderr)
        doms[mode].unpause()

    lines = []
    mmio_dom, mmio_cfg = doms["mmio"], cfgs["mmio"][1]
    raw = RawPingPong()
    try:
        raw.round(n // 5)  # warm up both
        await ioreq_round(mmio_dom, mmio_cfg.dsm.page, n // 5)
        raw_best = sim_best = float("inf")
        for _ in range(ROUNDS):
            raw_best = min(raw_best, raw.round(n) / n)
            sim_best = min(sim_best, await ioreq_round(mmio_dom, mmio_cfg.dsm.page, n) / n)
    finally:
        raw.close()
    lines.append(f"raw socketpair ping-pong        {1 / raw_best:9.0f} round trips/s  {raw_best * 1e6:7.1f} us")
    lines.append(f"daemon ioreq round trip         {1 / sim_best:9.0f} round trips/s  {sim_best * 1e6:7.1f} us"
                 f"  ({sim_best / raw_best:.2f}x raw, target <= 1.5x)")
    if not with_calls:
        return lines

    lines.append("_DSM calls                         sim-side calls/s   guest process calls/s   ioreqs/call")
    for mode in ("mmio", "ram"):
        path, cfg = cfgs[mode]
        for name, call in CALLS.items():
            calls = max(20, n // (10 if name == "function 0" else 100))
            await sim_calls(doms[mode], cfg, call, max(1, calls // 10))
            sim = min([await sim_calls(doms[mode], cfg, call, calls) for _ in range(3)])
            guest = min([await guest_calls(path, name, calls) for _ in range(2)])
            assert sim[1] == guest[1], (sim, guest)
            lines.append(f"  {mode:4s} {name:24s} {calls / sim[0]:12.0f} {calls / guest[0]:21.0f} {guest[1]:13d}")
    return lines


async def bench(n: int, with_calls: bool = True) -> list[str]:
    from pmemd.sim.hypervisor import serve_hypervisor

    with tempfile.TemporaryDirectory(prefix="pmemd-bench-") as tmp:
        workdir = Path(tmp)
        sock = str(workdir / "hv.sock")
        async with trio.open_nursery() as nursery:
            hv = await nursery.start(partial(serve_hypervisor, sock))
            daemons: list[trio.Process] = []
            try:
                return await measure(hv, workdir, sock, n, with_calls, nursery, daemons)
            finally:
                for daemon in daemons:
                    daemon.terminate()
                    await daemon.wait()
                nursery.cancel_scope.cancel()
    raise AssertionError("unreachable")


def main() -> None:
    quiet()
    if sys.argv[1:2] == ["--guest"]:
        guest_process_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 5000
    for line in trio.run(bench, n, "--round-trips-only" not in sys.argv):
        print(line, flush=True)


if __name__ == "__main__":
    main()
