"""Asynchronous QMP events from the NVDIMM devices: scrub completions and raised Notifies.

    PMEMD_SCRUB_COMPLETED  {"seq", "address", "length", "records", "overflowed"}  an ARS scrub settled
    PMEMD_HEALTH_CHANGED   {"slot", "id", "notify"}  a DIMM raised Notify 0x81 (health changed, re-read SMART)
    PMEMD_MEDIA_ERRORS     {"notify"}                the root raised Notify 0x81 (new errors, re-scan)
(QEMU's own STOP, RESUME and SHUTDOWN come from the commands and the server.)

The `_DSM` handlers are pure and only queue Notify values on the devices; `NotifyWatcher.check`
reports what appeared in those queues. It runs after every `_DSM` call (first among the
dispatcher's observers, before the transport drains them for the guest) and after every QMP
command, the only two places a queue can grow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pmemd.dsm.devices import Dimm, Root
from pmemd.dsm.scrub import ScrubCompleted

Emit = Callable[[str, Mapping[str, Any] | None], None]


class NotifyWatcher:
    """Reports each Notify value newly queued on a device as a QMP event.

    It only looks: draining the queues is the guest transport's job (the Notify must still
    reach the guest). A value is reported when it appears in a queue and again only after it
    left it (drained) and came back; the queues hold each value once, so one pending
    Notify is one event however many changes it covers — as the guest sees it.
    """

    def __init__(self, root: Root, dimms: Mapping[int, Dimm], emit: Emit) -> None:
        self.root = root
        self.dimms = dimms
        self.emit = emit
        self._seen: dict[int | None, frozenset[int]] = {}

    def check(self) -> None:
        for value in self._new(None, self.root.pending_notifies):
            self.emit("PMEMD_MEDIA_ERRORS", {"notify": value})
        for slot, dimm in self.dimms.items():
            for value in self._new(slot, dimm.pending_notifies):
                self.emit("PMEMD_HEALTH_CHANGED", {"slot": slot, "id": f"nvdimm{slot}", "notify": value})

    def _new(self, key: int | None, queue: Iterable[int]) -> list[int]:
        now = frozenset(queue)
        new = sorted(now - self._seen.get(key, frozenset()))
        self._seen[key] = now
        return new


def scrub_event(done: ScrubCompleted) -> dict[str, Any]:
    return {"seq": done.seq, "address": done.address, "length": done.length,
            "records": done.records, "overflowed": done.overflowed}
