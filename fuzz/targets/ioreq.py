"""ioreq machine: ioreq_t slots as Xen writes them → the device model's handling of each.

Input: 32-byte `ioreq_t` slots (at most 16). Each slot goes through what the ioreq server does
when its event channel fires: `IoreqServer._serve_slot` on a page holding it (in trio): the state check, a single access by the
table (`single_accesses`) or the private copy and `_perform` — malformed requests complete unhandled,
the rest run on the daemon's DSM page device (mmio mode, a fresh guest's dispatcher) with
1 MiB of guest RAM at GPA 0 behind the mapcache.
Contract: nothing raises (ALLOWED is empty); a served slot ends IORESP_READY; a device
may fail an access only with the page device's own refusal (`ValueError`: an access outside
the DSM page), which the server completes as unhandled — any other device exception, or a
dispatcher handler failure, is a finding. A notify port write runs at most one `_DSM` call
per item of a rep that fits one page.
"""

from __future__ import annotations

from typing import Any

import trio

from fuzz.contract import Finding
from fuzz.guest import CONFIG, fresh
from pmemd.daemon.frontends.xen_page import DsmPageDevice
from pmemd.ioreq import abi
from pmemd.ioreq.machine import single_accesses
from pmemd.ioreq.mapcache import MapCache
from pmemd.ioreq.server import IoreqServer

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_SLOTS = 16
RAM = 1 << 20
MAX_CALLS_PER_SLOT = abi.PAGE_SIZE // 4


class NoHypervisor:
    """`IoreqServer._perform` needs none; the mapcache below is filled up front."""

    domid = CONFIG.domid

    def __getattr__(self, name: str) -> Any:
        raise Finding(f"the ioreq path called the hypervisor ({name})")


class CheckedDevice:
    """The real page device; an exception other than its documented refusal is recorded."""

    def __init__(self, inner: DsmPageDevice) -> None:
        self.inner = inner
        self.unexpected: BaseException | None = None

    def _call(self, name: str, *args: int) -> Any:
        try:
            return getattr(self.inner, name)(*args)
        except ValueError:
            raise
        except Exception as e:
            self.unexpected = e
            raise

    def mmio_read(self, addr: int, size: int) -> int:
        return self._call("mmio_read", addr, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self._call("mmio_write", addr, size, value)

    def port_read(self, port: int, size: int) -> int:
        return self._call("port_read", port, size)

    def port_write(self, port: int, size: int, value: int) -> None:
        self._call("port_write", port, size, value)


def memory() -> MapCache:
    cache = MapCache(NoHypervisor(), [(0, RAM)])  # type: ignore[arg-type]
    cache.buckets[0] = (0, memoryview(bytearray(RAM)))
    return cache


def run(data: bytes) -> None:
    trio.run(serve_slots, data)


async def serve_slots(data: bytes) -> None:
    page_device = DsmPageDevice(CONFIG.dsm, fresh().handlers.dispatcher.dispatch)
    device = CheckedDevice(page_device)
    server = IoreqServer(NoHypervisor(), device, page_device.io_ranges())  # type: ignore[arg-type]
    singles = single_accesses(device)
    ram = memory()
    page = memoryview(bytearray(abi.PAGE_SIZE))
    for off in range(0, min(len(data), MAX_SLOTS * abi.IOREQ_SIZE) - abi.IOREQ_SIZE + 1, abi.IOREQ_SIZE):
        page[: abi.IOREQ_SIZE] = data[off : off + abi.IOREQ_SIZE]
        calls = page_device.stats.calls
        with trio.move_on_after(1) as late:  # the RAM is mapped up front: nothing should wait
            served = await server._serve_slot(page, 0, 0, singles, ram)
        if late.cancelled_caught:
            raise Finding("serving one slot waited on something")
        if device.unexpected is not None:
            raise Finding(f"device raised {device.unexpected!r}") from device.unexpected
        if served and page[abi.BITS_OFFSET] & abi.STATE_MASK != abi.STATE_IORESP_READY:
            raise Finding(f"a served slot was left in state {page[abi.BITS_OFFSET] & abi.STATE_MASK}")
        if page_device.stats.calls - calls > MAX_CALLS_PER_SLOT:
            raise Finding(f"one ioreq ran {page_device.stats.calls - calls} _DSM calls")
