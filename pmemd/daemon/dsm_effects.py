"""What a `_DSM` call does beyond its reply: guest notifies, vMCE poison, saved state.

The handlers are pure: a notify they raise waits in a device's `pending_notifies`, poison
changes sit in `Root.media.poison`, health changes in `Dimm.health`. `DsmEffects.after_call`
runs after every call (a `Dispatcher` observer), before the ioreq completes, and turns
them into what the guest and the next daemon see:

* notifies → the `EventRegister` the guest's `\\_SB.NVDR.NEVT` reads through the notify
  port, plus GPE `EVENT_GPE` raised so the guest runs it (`acpi.ssdt.nevt_method`);
* a changed poison set → the hypervisor's poison table (vMCE: guest reads there fault);
* a call that changed health or poison → the state file rewritten (`state_file`), so a
  daemon killed right after still comes back with it.

The host changes the same state through QMP (`pmemd.qmp`): `after_host_change` carries out
the same effects right after each command, so a Notify it queued reaches the guest (GPE)
at once, not at the guest's next `_DSM` call.

`open_media_effects` is the daemon's dsm-handlers part: restore, dirty-shutdown count,
the guest's one scrubber task (its completions go to the log and to every
`scrub_subscribers` callback, e.g. QMP events), clean-stop save.

The event register the guest reads through the notify port lives here too; the Xen DSM page
front end (`frontends.xen_page`) hands it out. Event register protocol (one DWORD port read of the notify port = one event):
  bits 0-7 the notify value (0x81), bits 8-23 the NFIT handle (0 root, slot + 1 DIMM);
  0 = nothing pending. An unclaimed port reads all-ones, which NEVT also takes as "none".
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import structlog
import trio

from acpi.dsm_buffer import ROOT_HANDLE
from acpi.events import EVENT_GPE
from pmemd.config import Config
from pmemd.dsm.build import DsmHandlers
from pmemd.dsm.call import Call
from pmemd.dsm.devices import Dimm, Root, slot_to_handle
from pmemd.dsm.dispatcher import Phase
from pmemd.dsm.notify import drain_notifies
from pmemd.dsm.state_blob import StateFormatError
from pmemd.xen.api import DeviceModelHypervisor, PlatformEvents

from .frontends.xen_page import EventRegister
from .scrubber import ScrubCompleted, run_scrubber
from .state_file import StateFile, load_state_file, state_file_path

log = structlog.get_logger("pmemd.dsm.effects")

# Calls whose handlers change state that outlives the daemon (saved after they run).
ROOT_PERSISTENT_FUNCTIONS = frozenset({4, 7, 8})  # clear error, inject, inject clear
DIMM_PERSISTENT_FUNCTIONS = frozenset({10, 17, 18})  # latch, set thresholds, inject SMART
SCRUB_EVENTS = 16  # completed-scrub reports buffered for the logger


class DsmEffects:
    """Carries one guest's DSM side effects out; see the module docstring.

    `platform` is None when the transport has no hypervisor (QEMU front end): notifies are
    then only queued and poison is not published. `save` persists the guest state.
    """

    def __init__(
        self,
        root: Root,
        dimms: Sequence[Dimm],
        *,
        platform: PlatformEvents | None = None,
        save: Callable[[], None] | None = None,
        gpe: int = EVENT_GPE,
    ) -> None:
        self.root = root
        self.dimms = list(dimms)
        self.platform = platform
        self.save = save
        self.gpe = gpe
        self.events = EventRegister(2 * (1 + len(self.dimms)))
        self.gpes_raised = 0
        self.poison_published = 0
        self._published: tuple[object, ...] | None = None
        self.scrub_subscribers: list[Callable[[ScrubCompleted], None]] = []  # besides the log

    def after_call(self, call: Call) -> None:
        """Drain notifies, publish poison, save state; never raises (a guest cannot break this)."""
        try:
            self.collect_notifies()
            self.publish_poison()
            if self.save is not None and _persistent(call):
                self.save()
        except Exception:
            log.exception("dsm side effects failed", handle=call.handle, function=call.function)

    def after_host_change(self, *, persist: bool = True) -> None:
        """After a host-side (QMP) command: deliver its notifies now, publish poison, and with
        `persist` save the state; never raises (the command's answer still goes out)."""
        try:
            self.collect_notifies()
            self.publish_poison()
            if persist and self.save is not None:
                self.save()
        except Exception:
            log.exception("side effects of a host command failed")

    def collect_notifies(self) -> None:
        """Move every pending notify into the event register; raise the GPE if any is new."""
        posted = False
        for handle, queue in self._queues():
            for value in drain_notifies(queue):
                posted |= self.events.post(handle, value)
        if posted and self.platform is not None:
            self.platform.raise_gpe(self.gpe)
            self.gpes_raised += 1

    def publish_poison(self) -> None:
        """Tell the hypervisor the poisoned ranges when they changed since last time: media
        errors, plus the whole range of every DIMM whose media its security refuses (locked,
        or being overwritten), so the guest's accesses there take a machine check."""
        poison = self.root.media.poison
        refused = tuple((d.config.address, d.config.pmem_size) for d in self.dimms if d.security.media_refused)
        stamp = (id(poison), poison.version, refused)
        if self.platform is None or stamp == self._published:
            return
        self.platform.set_poison([*poison, *refused])
        self._published = stamp
        self.poison_published += 1

    def _queues(self) -> Iterable[tuple[int, deque[int]]]:
        yield ROOT_HANDLE, self.root.pending_notifies
        for dimm in self.dimms:
            yield slot_to_handle(dimm.config.slot), dimm.pending_notifies


def _persistent(call: Call) -> bool:
    if call.handle == ROOT_HANDLE:
        return call.function in ROOT_PERSISTENT_FUNCTIONS
    return call.function in DIMM_PERSISTENT_FUNCTIONS


@contextlib.asynccontextmanager
async def open_media_effects(
    config: Config, handlers: DsmHandlers, hv: DeviceModelHypervisor | None
) -> AsyncIterator[DsmEffects]:
    """Restore saved state, count a dirty shutdown, run the scrubber, carry out side effects.

    On entry: the state file (`state_file_path`) is loaded into the devices; if it still says
    "running", every DIMM's health records a dirty shutdown; the file is rewritten as
    "running"; restored poison is published; `run_scrubber` starts. On exit (a clean stop):
    every DIMM's shutdown state reads clean and the file is saved as stopped.

    Errors: `StateFormatError` (naming the file) for a corrupt or newer state file: the
    daemon refuses to start rather than overwrite health it cannot read.
    """
    root, dimms = handlers.root, list(handlers.dimms.values())
    path = state_file_path(config)
    if path is not None:
        try:
            saved = load_state_file(path, root, dimms)
        except StateFormatError as e:
            raise StateFormatError(f"state file {path}: {e}") from None
        if saved is not None and saved.running:
            for dimm in dimms:
                dimm.health.dirty_shutdown()
            log.warning("previous daemon did not stop cleanly: dirty shutdown counted", state_file=str(path),
                        shutdown_count=[d.health.shutdown_count for d in dimms])
    state_file = StateFile(path) if path is not None else None  # before --depriv: saves go through it
    save = None if state_file is None else functools.partial(state_file.save, root, dimms, running=True)
    try:
        if save is not None:
            save()
        platform = await hv.open_platform() if hv is not None else None
    except BaseException:
        if state_file is not None:
            state_file.close()
        raise
    effects = DsmEffects(root, dimms, platform=platform, save=save)
    try:
        with handlers.dispatcher.observing(Phase.EFFECTS, effects.after_call):
            effects.publish_poison()
            async with trio.open_nursery() as nursery:
                send, receive = trio.open_memory_channel[ScrubCompleted](SCRUB_EVENTS)
                await nursery.start(run_scrubber, root.media, send)
                nursery.start_soon(_report_scrubs, effects, receive)
                try:
                    yield effects
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if platform is not None:
            platform.close()
        if state_file is not None:
            for dimm in dimms:
                dimm.health.clean_shutdown()
            try:
                state_file.save(root, dimms, running=False)
                log.info("guest state saved", state_file=str(path), poisoned=len(root.media.poison))
            except OSError as e:  # e.g. the disk is full: the next start counts a dirty shutdown
                log.error("guest state not saved", state_file=str(path), error=str(e))
            finally:
                state_file.close()


async def _report_scrubs(effects: DsmEffects, receive: trio.MemoryReceiveChannel[ScrubCompleted]) -> None:
    """Log each completed scrub and hand it to every subscriber (a failing one is logged)."""
    async for done in receive:
        log.info("scrub completed", address=hex(done.address), length=done.length, records=done.records,
                 overflowed=done.overflowed, previous_data=done.previous_data)
        for subscriber in list(effects.scrub_subscribers):
            try:
                subscriber(done)
            except Exception:
                log.exception("scrub subscriber failed")
