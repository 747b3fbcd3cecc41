"""The daemon's "qmp" step: the QMP server wired to one served guest.

It reaches the guest through what earlier steps built: the dispatcher's devices (root and
DIMMs), the label stores, and the ioreq server (stop/cont disable and enable it through the
hypervisor). `quit` cancels the guest's nursery, so teardown runs as on SIGTERM.

After every command the DSM side effects run (`DsmEffects.after_host_change`): a Notify a
command queued raises the guest's GPE at once and changed state is saved. Scrub completions
come from the guest's one scrubber (dsm-handlers' `DsmEffects.scrub_subscribers`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

import structlog
import trio

from acpi.dsm_buffer import ROOT_HANDLE
from pmemd.dsm.devices import Dimm, Root, slot_to_handle
from pmemd.dsm.scrubber import ScrubCompleted

from .control import GuestControl, RunState
from .events import NotifyWatcher, pump_scrub_events, scrub_event
from .server import QmpServer

log = structlog.get_logger("pmemd.qmp")

if TYPE_CHECKING:
    from pmemd.daemon import Guest


def guest_devices(guest: Guest) -> tuple[Root, dict[int, Dimm]]:
    """The root device and slot → DIMM of a guest whose dispatcher is built."""
    assert guest.dispatcher is not None
    root_target = guest.dispatcher.target(ROOT_HANDLE)
    assert root_target is not None
    dimms = {}
    for nvdimm in guest.config.nvdimms:
        target = guest.dispatcher.target(slot_to_handle(nvdimm.slot))
        assert target is not None
        dimms[nvdimm.slot] = target.device
    return root_target.device, dimms


@contextlib.asynccontextmanager
async def open_qmp(guest: Guest, *, autostart: bool | None = None) -> AsyncIterator[QmpServer | None]:
    """Serve QMP on the config's `[qmp] socket` while the block runs.

    `autostart=False` is QEMU's -S: the ioreq server is disabled and the state reads
    `prelaunch` until `cont`; by default it follows `pmemd run --paused`. The listener
    `pmemd run` bound at exec (`guest.options.early_qmp`) is adopted with its clients.
    With the QEMU transport QEMU is the guest's device model and
    owns its QMP socket (libxl talks to it), so nothing is served and this yields None.
    """
    options = guest.options
    if autostart is None:
        autostart = not options.paused
    if guest.config.dsm.transport == "qemu":
        if options.early_qmp is not None:
            options.early_qmp.close()
        log.info("qmp not served: QEMU owns the guest's monitor ([dsm] transport = \"qemu\")")
        yield None
        return
    root, dimms = guest_devices(guest)
    hv, ioreq = guest.hv, guest.server

    async def set_serving(enabled: bool) -> None:
        if hv is not None and ioreq is not None and ioreq.server_id is not None:
            await hv.set_ioreq_server_state(ioreq.server_id, enabled)

    server: QmpServer
    control = GuestControl(
        guest.config, root, dimms, guest.labels, set_serving,
        emit=lambda name, data: server.emit(name, data),
        request_quit=lambda: server.request_quit(),
    )
    watcher = NotifyWatcher(root, dimms, lambda name, data: server.emit(name, data))
    effects = guest.effects

    def after_command(name: str) -> None:
        watcher.check()  # first: it only peeks at the queues the effects drain
        if effects is not None:
            effects.after_host_change(persist=not name.startswith("query-"))

    def scrub_completed(done: ScrubCompleted) -> None:
        server.emit("PMEMD_SCRUB_COMPLETED", scrub_event(done))

    server = QmpServer(control, guest.config.qmp_socket, on_quit=guest.nursery.cancel_scope.cancel,
                       after_command=after_command, early=options.early_qmp)
    if not autostart:
        await control.set_runstate(RunState.PRELAUNCH)
    with _after_each_dsm_call(guest, watcher.check):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            if effects is not None:  # the guest's scrubber reports to us too
                effects.scrub_subscribers.append(scrub_completed)
            else:
                await nursery.start(pump_scrub_events, root.media, server.emit)
            try:
                yield server
            finally:
                if effects is not None:
                    effects.scrub_subscribers.remove(scrub_completed)
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _after_each_dsm_call(guest: Guest, check: Callable[[], None]) -> Iterator[None]:
    """Run `check` after every `_DSM` call, ahead of other observers (it only peeks at the queues)."""
    assert guest.dispatcher is not None
    observers = getattr(guest.dispatcher, "observers", None)
    if observers is not None:
        def observe(call: object) -> None:
            check()

        observers.insert(0, observe)
        try:
            yield
        finally:
            observers.remove(observe)
        return
    device = guest.device  # a dispatcher without observers: wrap the page device's dispatch
    if device is None:
        yield
        return
    dispatch = device.dispatch

    def dispatch_and_check(page: bytes) -> bytes:
        reply = dispatch(page)
        check()
        return reply

    device.dispatch = dispatch_and_check
    try:
        yield
    finally:
        device.dispatch = dispatch
