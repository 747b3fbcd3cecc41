"""ioreq machine: ioreq_t slots as Xen writes them → the device model's handling of each.

Input: 32-byte `ioreq_t` slots (at most 16). Each slot goes through what the ioreq server does
when its event channel fires: the state check (`device_model_wakes`), the private copy
(`IoRequest.from_slot`), then `IoreqServer._perform` — malformed requests complete unhandled,
the rest run on the daemon's DSM page device (mmio mode, a fresh guest's dispatcher) with
1 MiB of guest RAM at GPA 0 behind the mapcache.
Contract: nothing raises (ALLOWED is empty); the slot's new `data` fits 64 bits; a device
may fail an access only with the page device's own refusal (`ValueError`: an access outside
the DSM page), which the server completes as unhandled — any other device exception, or a
dispatcher handler failure, is a finding. A notify port write runs at most one `_DSM` call
per item of a rep that fits one page.
"""

from __future__ import annotations

from typing import Any

from fuzz.contract import Finding
from fuzz.guest import CONFIG, fresh
from pmemd.daemon.frontends.xen_page import DsmPageDevice
from pmemd.ioreq import abi
from pmemd.ioreq.machine import IoRequest, Verdict, device_model_wakes
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
    page_device = DsmPageDevice(CONFIG.dsm, fresh().handlers.dispatcher.dispatch)
    device = CheckedDevice(page_device)
    server = IoreqServer(NoHypervisor(), device, page_device.io_ranges())  # type: ignore[arg-type]
    ram = memory()
    for off in range(0, min(len(data), MAX_SLOTS * abi.IOREQ_SIZE) - abi.IOREQ_SIZE + 1, abi.IOREQ_SIZE):
        slot = abi.SLOT_STRUCT.unpack_from(data, off)
        if device_model_wakes(slot[6] & abi.STATE_MASK) is not Verdict.SERVE:
            continue
        calls = page_device.stats.calls
        result = server._perform(IoRequest.from_slot(slot), ram)
        if device.unexpected is not None:
            raise Finding(f"device raised {device.unexpected!r}") from device.unexpected
        abi.DATA_STRUCT.pack(result)  # struct.error: the data word does not fit the slot
        if page_device.stats.calls - calls > MAX_CALLS_PER_SLOT:
            raise Finding(f"one ioreq ran {page_device.stats.calls - calls} _DSM calls")
