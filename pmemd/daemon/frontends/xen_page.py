"""The guest-facing end of `_DSM`: the DSM page and its notify port, as ioreqs see them.

In `mmio` mode the page is a trapped MMIO page: its bytes live here, in a private
buffer the guest reads and writes one access at a time. In `ram` mode the page is guest
RAM reached through a foreign mapping, and only the notify port traps. Either way a
4-byte write to the notify port runs the call: the page is copied (the guest may keep
writing while we work), the dispatcher answers the copy, and the reply is written back
before the notify completes — so the guest's next read sees it.

A 4-byte read of the notify port hands out the next guest event (`EventRegister`; the
guest's `\\_SB.NVDR.NEVT` reads it after the GPE `DsmEffects` raises): bits 0-7 the notify
value (0x81), bits 8-23 the NFIT handle (0 root, slot + 1 DIMM); 0 = nothing pending.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from acpi import dsm_buffer as layout
from acpi.events import encode_event
from pmemd.config import DsmConfig
from pmemd.dsm.dispatcher import Dispatch
from pmemd.ioreq.device import IoRange
from pmemd.process import logs

log = structlog.get_logger("pmemd.dsm")

class EventRegister:
    """Notify events waiting for the guest, oldest first; each (handle, value) at most once.

    Bounded by construction: one entry per target and value, so at most `capacity`.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[int] = deque()
        self.posted = 0
        self.read_out = 0

    def post(self, handle: int, value: int) -> bool:
        """Queue an event; False when the same one is already waiting (or the register is full)."""
        event = encode_event(handle, value)
        if event in self._queue or len(self._queue) >= self.capacity:
            return False
        self._queue.append(event)
        self.posted += 1
        return True

    def read(self) -> int:
        """The next event, removed; 0 when none waits."""
        if not self._queue:
            return 0
        self.read_out += 1
        return self._queue.popleft()

    def __len__(self) -> int:
        return len(self._queue)


LATENCY_WINDOW = 65536  # handler latencies kept (microseconds)


@dataclass
class DsmStatistics:
    calls: int = 0
    bad_notifies: int = 0
    page_reads: int = 0
    page_writes: int = 0
    by_function: dict[int, int] = field(default_factory=dict)
    latencies_us: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def summary(self) -> dict[str, float | int]:
        """Counts plus median and 95th percentile of the recent handler latencies (notify to reply)."""
        out: dict[str, float | int] = {"calls": self.calls, "bad_notifies": self.bad_notifies,
                                       "page_reads": self.page_reads, "page_writes": self.page_writes}
        if self.latencies_us:
            ordered = sorted(self.latencies_us)
            out["latency_median_us"] = round(statistics.median(ordered), 1)
            out["latency_p95_us"] = round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)
        return out


class DsmPageDevice:
    """Serve the DSM page (`mmio` mode) and the notify port for one guest.

    `ram_page`, required in `ram` mode, is a writable view of the page in guest RAM;
    `events` is what notify-port reads hand out (none: they read as zero, as QEMU's do).
    """

    def __init__(self, dsm: DsmConfig, dispatch: Dispatch, ram_page: memoryview | None = None, *,
                 events: EventRegister | None = None) -> None:
        self.page: bytearray | memoryview
        if dsm.mode == "ram":
            if ram_page is None or len(ram_page) != layout.PAGE_SIZE:
                raise ValueError("ram mode needs a one-page view of the DSM page in guest RAM")
            self.page = ram_page
        else:
            self.page = bytearray(layout.PAGE_SIZE)
        self.dsm = dsm
        self.dispatch = dispatch
        self.stats = DsmStatistics()
        self.events = events if events is not None else EventRegister(0)

    def io_ranges(self) -> Sequence[IoRange]:
        port = self.dsm.notify_port
        ranges = [IoRange(False, port, port + layout.NOTIFY_WIDTH - 1)]
        if self.dsm.mode == "mmio":
            ranges.append(IoRange(True, self.dsm.page, self.dsm.page + layout.PAGE_SIZE - 1))
        return ranges

    # -- notify port ---------------------------------------------------------------------

    def port_read(self, port: int, size: int) -> int:
        """A 4-byte notify-port read takes the next event (0: none); other reads see zero."""
        if port == self.dsm.notify_port and size == layout.NOTIFY_WIDTH:
            return self.events.read()
        return 0

    def port_write(self, port: int, size: int, value: int) -> None:
        if port != self.dsm.notify_port or size != layout.NOTIFY_WIDTH:
            self._bad_notify("notify must be one 4-byte write to the port", port=port, size=size)
            return
        if value != self.dsm.page & 0xFFFFFFFF:
            self._bad_notify("notify value is not the DSM page address", port=port, value=value)
        self.run_call()

    def run_call(self) -> None:
        started = time.perf_counter()
        request = bytes(self.page)  # private copy: the guest may rewrite the page meanwhile
        reply = self.dispatch(request)
        self.page[: len(reply)] = reply
        self.stats.calls += 1
        function = int.from_bytes(request[8:12], "little")
        self.stats.by_function[function] = self.stats.by_function.get(function, 0) + 1
        self.stats.latencies_us.append((time.perf_counter() - started) * 1e6)

    def _bad_notify(self, message: str, **fields: int) -> None:
        self.stats.bad_notifies += 1
        logs.refused("dsm-notify", reason=message, **{k: hex(v) for k, v in fields.items()})

    # -- DSM page (mmio mode) ------------------------------------------------------------

    def mmio_read(self, addr: int, size: int) -> int:
        offset = self._offset(addr, size)
        self.stats.page_reads += 1
        return int.from_bytes(self.page[offset : offset + size], "little")

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        offset = self._offset(addr, size)
        self.stats.page_writes += 1
        self.page[offset : offset + size] = value.to_bytes(size, "little")

    def _offset(self, addr: int, size: int) -> int:
        offset = addr - self.dsm.page
        if not 0 <= offset <= layout.PAGE_SIZE - size:
            raise ValueError(f"access [{addr:#x}, +{size}) is outside the DSM page")
        return offset
