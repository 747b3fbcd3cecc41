"""Round trips per second: the raw channel versus the simulator <-> ioreq server path.

    .venv/bin/python bench/ioreq_channel.py [N]

1. raw: two processes ping-pong 4 bytes over a socketpair (blocking reads) - the floor.
2. sim <-> server: this process runs the simulated hypervisor and injects MMIO reads on
   vCPU 0 in-process; a second process runs `pmemd.ioreq.server.IoreqServer` with a
   trivial device. One round trip = slot filled, port notified, served, IORESP_READY
   notified back, completed. Target: <= 1.5x the raw round-trip time.
3. guest end to end (for information): a third process uses `GuestConnection`, so each
   access is guest -> sim -> server -> sim -> guest (two channel round trips).
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmemd.ioreq import abi
from pmemd.ioreq.device import IoRange
from pmemd.sim.ioreq import Request

MMIO = 0xF000_0000
DOMID = 1


def quiet() -> None:
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def raw_round_trips(n: int) -> float:
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        fd = b.fileno()
        while (data := os.read(fd, 4)) and data != b"stop":
            os.write(fd, data)
        os._exit(0)
    b.close()
    fd = a.fileno()
    msg = b"\x01\x00\x00\x00"
    for _ in range(1000):
        os.write(fd, msg)
        os.read(fd, 4)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, msg)
        os.read(fd, 4)
    dt = time.perf_counter() - t0
    os.write(fd, b"stop")
    os.waitpid(pid, 0)
    a.close()
    return n / dt


class Trivial:
    def mmio_read(self, addr: int, size: int) -> int:
        return 42

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        pass

    port_read = mmio_read
    port_write = mmio_write


async def run_dm(path: str) -> None:
    """Child process: the daemon's ioreq server with a trivial device."""
    from pmemd.ioreq.server import IoreqServer
    from pmemd.sim.client.device_model import SimDeviceModel

    hv = await SimDeviceModel.connect(path, DOMID)
    server = IoreqServer(hv, Trivial(), [IoRange(True, MMIO, MMIO + 0xFFF)])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # bench only: EOF on stdin = stop
        nursery.cancel_scope.cancel()


def run_guest(path: str, n: int) -> None:
    """Child process: a guest vCPU doing n trapped MMIO reads."""
    from pmemd.sim.client.vcpu import GuestConnection

    with GuestConnection(path, DOMID, 0) as g:
        for _ in range(500):
            g.mmio_read(MMIO, 4)
        t0 = time.perf_counter()
        for _ in range(n):
            g.mmio_read(MMIO, 4)
        dt = time.perf_counter() - t0
    print(f"{n / dt:.0f}", flush=True)


async def sim_round_trips(n: int) -> tuple[float, float]:
    from pmemd.sim.hv_domain import Layout
    from pmemd.sim.hypervisor import serve_hypervisor

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hv.sock")
        async with trio.open_nursery() as nursery:
            hv = await nursery.start(partial(serve_hypervisor, path))
            dom = hv.create_domain(DOMID, Layout(16 << 20, 0, 256 << 20, 1))
            dom.unpause()
            dm = await trio.lowlevel.open_process(
                [sys.executable, __file__, "--dm", path], stdout=subprocess.PIPE, stdin=subprocess.PIPE
            )
            buf = b""
            while b"ready" not in buf:
                buf += await dm.stdout.receive_some()
            read = Request(abi.IOREQ_TYPE_COPY, MMIO, 0, 1, 4, abi.IOREQ_READ, False, False)
            for _ in range(1000):
                await dom.access(0, read)
            t0 = time.perf_counter()
            for _ in range(n):
                await dom.access(0, read)
            sim_rate = n / (time.perf_counter() - t0)
            guest = await trio.run_process(
                [sys.executable, __file__, "--guest", path, str(n // 2)], capture_stdout=True
            )
            guest_rate = float(guest.stdout.decode().split()[-1])
            await dm.stdin.aclose()
            await dm.wait()
            nursery.cancel_scope.cancel()
    return sim_rate, guest_rate


def main() -> None:
    quiet()
    if sys.argv[1:2] == ["--dm"]:
        trio.run(run_dm, sys.argv[2])
        return
    if sys.argv[1:2] == ["--guest"]:
        run_guest(sys.argv[2], int(sys.argv[3]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    raw = raw_round_trips(n)
    sim, guest = trio.run(sim_round_trips, n)
    print(f"raw socketpair ping-pong      {raw:10.0f} round trips/s  {1e6 / raw:7.1f} us")
    print(f"sim <-> ioreq server          {sim:10.0f} round trips/s  {1e6 / sim:7.1f} us"
          f"  ({raw / sim:.2f}x raw, target <= 1.5x)")
    print(f"guest process end to end      {guest:10.0f} accesses/s     {1e6 / guest:7.1f} us")


if __name__ == "__main__":
    main()
