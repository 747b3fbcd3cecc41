"""The QEMU front end for `_DSM`: a doorbell socket and the DSM page in shared guest RAM.

QEMU's `isa-debugcon` forwards each 1-byte write to the notify port to a Unix socket
(`-chardev socket,path=<doorbell>`), without waiting for us. The guest's RAM is a shared
file (`-object memory-backend-file,share=on,mem-path=<ram>`); below 4 GiB its file offset
is the guest-physical address, so the page and the completion words after it
(`acpi.doorbell`) are one `mmap` away. Per ring:

  1. read the ticket word; if it is the ticket last answered, the ring is stale (a late
     or repeated byte) and is dropped, so no call is ever served twice;
  2. copy the page and answer the copy with the same dispatcher the Xen transport uses;
  3. write the reply, then the ticket to the done word: the reply is in place before the
     guest can see the call complete (x86 stores are not reordered with stores).

Only the transport differs from Xen's: the page decoding and every handler are shared.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import statistics as stats
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from acpi import dsm_buffer as layout
from acpi.doorbell import DONE_OFFSET, RESERVED_SIZE, TICKET_OFFSET
from pmemd.config import DsmConfig
from pmemd.dsm.dispatcher import Dispatch

log = structlog.get_logger("pmemd.qemu")

LATENCY_WINDOW = 65536  # latency samples kept: a whole boot's calls (~1 200) many times over


@dataclass
class DoorbellStatistics:
    """What the doorbell server has done; latencies are handler times in microseconds, of the
    last `LATENCY_WINDOW` calls (a daemon lives as long as its guest: no O(calls) state)."""

    rings: int = 0
    calls: int = 0
    stale_rings: int = 0
    connections: int = 0
    latencies_us: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))

    def summary(self) -> dict[str, float | int]:
        """Counts plus median and 95th percentile of the recent handler latencies."""
        out: dict[str, float | int] = {
            "rings": self.rings, "calls": self.calls, "stale_rings": self.stale_rings,
            "connections": self.connections,
        }
        if self.latencies_us:
            ordered = sorted(self.latencies_us)
            out["latency_median_us"] = round(stats.median(ordered), 1)
            out["latency_p95_us"] = round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)
        return out


class GuestRamPage:
    """The DSM page and its completion page, mapped from the guest-RAM file.

    Resources: holds the file mapping until `close()`.
    """

    def __init__(self, ram_file: Path, page: int) -> None:
        fd = os.open(ram_file, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if page + RESERVED_SIZE > size:
                raise ValueError(f"{ram_file} ({size} bytes) does not reach the DSM page at {page:#x}")
            self._map = mmap.mmap(fd, RESERVED_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                  offset=page)
        finally:
            os.close(fd)
        self.view = memoryview(self._map)

    @property
    def page(self) -> memoryview:
        return self.view[: layout.PAGE_SIZE]

    def word(self, offset: int) -> int:
        return int.from_bytes(self.view[offset : offset + 4], "little")

    def set_word(self, offset: int, value: int) -> None:
        self.view[offset : offset + 4] = value.to_bytes(4, "little")

    def close(self) -> None:
        self.view.release()
        self._map.close()


class DoorbellServer:
    """Answer `_DSM` calls rung on QEMU's debugcon doorbell (one byte per call)."""

    def __init__(self, dsm: DsmConfig, dispatch: Dispatch, ram: GuestRamPage) -> None:
        if dsm.transport != "qemu" or dsm.doorbell is None:
            raise ValueError("the doorbell server needs [dsm] transport = \"qemu\" and a doorbell path")
        self.dsm = dsm
        self.dispatch = dispatch
        self.ram = ram
        self.last_ticket = ram.word(DONE_OFFSET)
        self.stats = DoorbellStatistics()

    def statistics(self) -> DoorbellStatistics:
        return self.stats

    def ring(self) -> bool:
        """Serve one doorbell byte; False when it was stale (its ticket was answered already)."""
        self.stats.rings += 1
        ticket = self.ram.word(TICKET_OFFSET)
        if ticket == self.last_ticket:
            self.stats.stale_rings += 1
            return False
        started = time.perf_counter_ns()
        request = bytes(self.ram.page)  # private copy: the guest may rewrite the page meanwhile
        reply = self.dispatch(request)
        self.ram.page[: len(reply)] = reply
        self.ram.set_word(DONE_OFFSET, ticket)
        self.last_ticket = ticket
        self.stats.latencies_us.append((time.perf_counter_ns() - started) / 1000)
        self.stats.calls += 1
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the doorbell socket and serve rings from every connection until cancelled.

        Resources: creates the socket file (replacing a stale one) and removes it on exit.
        """
        path = str(self.dsm.doorbell)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            sock.listen(1)
            listener = trio.SocketListener(sock)
        except BaseException:
            sock.close()
            raise
        try:
            log.info("doorbell listening", socket=path, page=hex(self.dsm.page))
            task_status.started()
            async with listener, trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._serve_connection, stream)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        log.info("doorbell connected")
        async with stream:
            while data := await _receive(stream):
                for _ in data:
                    self.ring()
        log.info("doorbell disconnected")


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(4096)
    except trio.BrokenResourceError:
        return b""

