"""The daemon's generic ioreq server: the trio shell around `pmemd.ioreq.machine`.

Set-up follows QEMU (reference §1.6) with binding before enabling, so no request can
fire on an unbound port: create server -> map the synchronous page -> get info ->
bind one event channel per vCPU (to the slot's vp_eport) -> map ranges -> enable ->
`task_status.started()`. Teardown runs in reverse (disable, unmap, close the event
channel, destroy), shielded and bounded, on exit, error or cancellation.

Serving (§1.5): for each pending port, the slot of its vCPU is handled only in
READY; the state goes INPROCESS, the request runs against the `Device` on a private
copy (a single access, nearly every request, by one lookup in `single_accesses`),
`data` is written back only when Xen takes it (`needs_completion`), the state
goes IORESP_READY and the port is notified. Handling a request has no checkpoint
(except mapping guest RAM for data_is_ptr, which is shielded), so cancellation never
leaves a slot half done. Malformed requests (QEMU would abort) are logged and
completed as unhandled: reads all-ones, writes dropped; the server keeps serving.

Errors: a slot found not INPROCESS after handling (someone else wrote it) is QEMU's
"Badness in I/O request": the server asks Xen to shut the domain down and stops.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog
import trio

from pmemd.ioreq import abi
from pmemd.ioreq.device import Device, IoRange
from pmemd.ioreq.machine import (
    SINGLE_BITS,
    IoRequest,
    SingleAccess,
    Verdict,
    buffer_span,
    device_model_wakes,
    execute,
    malformed,
    needs_completion,
    single_accesses,
    unhandled_result,
)
from pmemd.ioreq.mapcache import MapCache
from pmemd.xen.api import SHUTDOWN_POWEROFF, DeviceModelHypervisor, EventChannel
from pmemd.xen.errors import HypervisorError, ProtocolError

log = structlog.get_logger("pmemd.ioreq.server")

TEARDOWN_TIMEOUT = 5.0  # seconds; teardown talks to the hypervisor, which may be gone
# A burst: after serving, the slot is watched for the vCPU's next request (`watch_slot`), then
# the channel waits a moment (`next_in_burst`); at most this many batches between checkpoints,
# so other tasks (QMP, the other ioreq server, watches) wait one burst at most.
BURST_BUDGET = 32
# Reads of the slot's state before giving up on the vCPU's next request: ~40 µs natively, a
# few milliseconds in the nested lab's dom0, where Python runs 20-80x slower.
WATCH_READS = 1000


def watch_slot(page: memoryview, off: int, reads: int) -> bool:
    """Whether the slot at `off` holds a new request (READY) within `reads` reads of its state.

    The vCPU whose access was just completed usually traps again at once (a loop, the next
    access of a `_DSM` call). Xen fills the slot before it raises the event, so a request seen
    here is whole; serving it without waiting for the event saves the event's trip through
    dom0's interrupt, the unmask and the poll. Its port stays masked meanwhile: Xen's events on
    it are held and fire once it is unmasked, then find the slot done (spurious)."""
    at = off + abi.BITS_OFFSET
    ready = abi.STATE_IOREQ_READY
    for _ in range(reads):
        if page[at] & abi.STATE_MASK == ready:
            return True
    return False


class IoreqBadness(Exception):
    """The slot left INPROCESS while we served it; the domain was asked to shut down."""


@dataclass(frozen=True)
class IoreqServerStatistics:
    served: int
    by_kind: Mapping[str, int]
    malformed: int
    spurious: int
    unknown_ports: int
    device_errors: int
    watched: int  # requests found by watching the slot in a burst, before their event


@dataclass
class _Counters:
    served: int = 0
    malformed: int = 0
    spurious: int = 0
    unknown_ports: int = 0
    device_errors: int = 0
    watched: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)


class IoreqServer:
    """Serve `device`'s `ranges` for the guest behind `hv`.

    Usage: `await nursery.start(IoreqServer(hv, device, ranges).run)`.
    """

    def __init__(self, hv: DeviceModelHypervisor, device: Device, ranges: Sequence[IoRange], *,
                 adopt: int | None = None) -> None:
        self.hv = hv
        self.device = device
        self.ranges = tuple(ranges)
        self.adopt = adopt  # a server a killed predecessor left behind (real Xen keeps it): take it over
        self.server_id: int | None = None
        self._counters = _Counters()
        self.log = log.bind(domid=hv.domid)

    def statistics(self) -> IoreqServerStatistics:
        c = self._counters
        return IoreqServerStatistics(
            c.served, MappingProxyType(dict(c.by_kind)), c.malformed, c.spurious, c.unknown_ports, c.device_errors,
            c.watched)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, enable, report started, serve until cancelled; always tear down."""
        hv = self.hv
        info = await hv.domain_info()
        server_id = self.adopt if self.adopt is not None else await hv.create_ioreq_server()
        self.server_id = server_id
        self.log = self.log.bind(server=server_id)
        mapped: list[IoRange] = []
        evtchn: EventChannel | None = None
        enabled = False
        try:
            page = await hv.map_ioreq_page(server_id)
            await hv.get_ioreq_server_info(server_id)
            evtchn = await hv.open_event_channel()
            for r in self.ranges:
                if self.adopt is not None:  # the predecessor's ranges are still mapped
                    try:
                        await hv.unmap_io_range(server_id, r.is_mmio, r.start, r.end)
                    except HypervisorError:
                        pass
                await hv.map_io_range(server_id, r.is_mmio, r.start, r.end)
                mapped.append(r)
            # Bind before enabling where the page already names the ports; real Xen writes the
            # vp_eports only when the server is enabled (the guest is still paused then).
            if not all(self._remote_port(page, vcpu) for vcpu in range(info.vcpus)):
                await hv.set_ioreq_server_state(server_id, True)
                enabled = True
            vcpu_of_port: dict[int, int] = {}
            for vcpu in range(info.vcpus):
                vcpu_of_port[await evtchn.bind_interdomain(self._remote_port(page, vcpu))] = vcpu
            if not enabled:
                await hv.set_ioreq_server_state(server_id, True)
                enabled = True
            self.log.info("ioreq server enabled", vcpus=info.vcpus, ranges=len(mapped), adopted=self.adopt is not None)
            task_status.started()
            # An adopted server may hold a request whose event went to the dead predecessor: look once.
            sweep = list(vcpu_of_port) if self.adopt is not None else []
            await self._serve(page, evtchn, vcpu_of_port, MapCache(hv, info.ram_ranges()), sweep)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + TEARDOWN_TIMEOUT
                await self._teardown(server_id, enabled, mapped, evtchn)

    @staticmethod
    def _remote_port(page: memoryview, vcpu: int) -> int:
        (port,) = abi.PORT_STRUCT.unpack_from(page, abi.slot_offset(vcpu) + abi.VP_EPORT_OFFSET)
        return int(port)

    async def _teardown(
        self, server_id: int, enabled: bool, mapped: list[IoRange], evtchn: EventChannel | None
    ) -> None:
        async def step(what: str, call) -> None:  # type: ignore[no-untyped-def]
            try:
                await call
            except (HypervisorError, ProtocolError, OSError, trio.ClosedResourceError) as exc:
                self.log.info("teardown step failed", step=what, error=str(exc))

        if enabled:
            await step("disable", self.hv.set_ioreq_server_state(server_id, False))
        for r in reversed(mapped):
            await step("unmap range", self.hv.unmap_io_range(server_id, r.is_mmio, r.start, r.end))
        if evtchn is not None:
            evtchn.close()
        await step("destroy", self.hv.destroy_ioreq_server(server_id))
        c = self._counters
        self.log.info("ioreq server torn down", served=c.served, watched=c.watched, spurious=c.spurious)

    async def _serve(
        self, page: memoryview, evtchn: EventChannel, vcpu_of_port: dict[int, int], memory: MapCache,
        sweep: list[int],
    ) -> None:
        """Serve the slots whose ports fire, until cancelled. A burst (see `watch_slot` and the
        channel's `next_in_burst`) runs at most `BURST_BUDGET` batches between checkpoints."""
        counters = self._counters
        singles = single_accesses(self.device)
        next_in_burst, unmask = evtchn.next_in_burst, evtchn.unmask
        while True:
            ports, sweep = sweep or await evtchn.pending(), []
            masked, streak = ports, 0
            while ports:
                served, served_off = None, 0  # the last port served, and its slot
                for port in ports:
                    vcpu = vcpu_of_port.get(port)
                    if vcpu is None:
                        counters.unknown_ports += 1  # QEMU aborts; we log and carry on
                        self.log.error("event on a port we did not bind", port=port)
                        continue
                    off = vcpu * abi.IOREQ_SIZE
                    if await self._serve_slot(page, off, vcpu, singles, memory):
                        evtchn.notify(port)
                        served, served_off = port, off
                streak += 1
                if streak >= BURST_BUDGET:
                    break
                if served is not None and watch_slot(page, served_off, WATCH_READS):
                    counters.watched += 1
                    ports = [served]  # its port is still masked: served without an event
                    continue
                unmask(masked)
                ports = masked = next_in_burst()
            unmask(masked)

    async def _serve_slot(self, page: memoryview, off: int, vcpu: int,
                          singles: dict[tuple[int, int, int], SingleAccess], memory: MapCache) -> bool:
        """Serve the request in the slot at `off` if it holds one (READY); False if not (spurious)."""
        bits_off = off + abi.BITS_OFFSET
        bits = page[bits_off]
        if device_model_wakes(bits & abi.STATE_MASK) is not Verdict.SERVE:
            self._counters.spurious += 1
            return False
        page[bits_off] = (bits & ~abi.STATE_MASK) | abi.STATE_IOREQ_INPROCESS
        slot = abi.SLOT_STRUCT.unpack_from(page, off)
        addr, data, count, size, _eport, _pad, slot_bits, type_ = slot
        single = singles.get((type_, size, slot_bits & SINGLE_BITS)) if count == 1 else None
        if single is not None:
            data, completes = self._perform_single(single, addr, data), single.completes
        else:
            req = IoRequest.from_slot(slot)
            reason = malformed(req)  # first: a malformed request maps no guest memory
            if reason is None and (span := buffer_span(req)) is not None:
                with trio.CancelScope(shield=True):
                    await memory.ensure(*span)
            data, completes = self._perform(req, memory, reason), needs_completion(req)
        if completes:
            abi.DATA_STRUCT.pack_into(page, off + abi.DATA_OFFSET, data)
        bits = page[bits_off]
        if bits & abi.STATE_MASK != abi.STATE_IOREQ_INPROCESS:
            self.log.error("Badness in I/O request: not in service", vcpu=vcpu, state=bits & abi.STATE_MASK)
            with trio.CancelScope(shield=True):
                await self.hv.shutdown(SHUTDOWN_POWEROFF)
            raise IoreqBadness(f"vcpu {vcpu} slot left INPROCESS")
        page[bits_off] = (bits & ~abi.STATE_MASK) | abi.STATE_IORESP_READY
        return True

    def _perform_single(self, access: SingleAccess, addr: int, data: int) -> int:
        """Run one single access (the common case, see `SingleAccess`); never raises."""
        counters = self._counters
        counters.served += 1
        counters.by_kind[access.kind] += 1
        try:
            return access.run(addr, data)
        except Exception:
            counters.device_errors += 1
            self.log.exception("device failed; access completed as unhandled", kind=access.kind, addr=addr)
            return access.unhandled(data)

    def _perform(self, req: IoRequest, memory: MapCache, reason: str | None) -> int:
        """Run one request (`reason`: why it is malformed, or None); never raises (malformed
        and failing requests complete unhandled)."""
        counters = self._counters
        if reason is not None:
            counters.malformed += 1
            self.log.warning("malformed ioreq completed as unhandled", reason=reason, addr=req.addr, type=req.type)
            return unhandled_result(req)
        counters.served += 1
        counters.by_kind[req.kind] += 1
        if req.type == abi.IOREQ_TYPE_INVALIDATE:
            memory.invalidate()
            return req.data
        if req.type == abi.IOREQ_TYPE_PCI_CONFIG:
            return unhandled_result(req)  # no PCI devices claimed
        try:
            return execute(req, self.device, memory)
        except Exception:
            counters.device_errors += 1
            self.log.exception("device failed; access completed as unhandled", kind=req.kind, addr=req.addr)
            return unhandled_result(req)
