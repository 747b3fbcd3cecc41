"""What a `_DSM` call does beyond its reply: guest notifies, vMCE poison, saved state.

The handlers are pure: a notify they raise waits in a device's `pending_notifies`, poison
changes sit in `Root.media.poison`, health changes in `Dimm.health`. `DsmEffects.after_call`
runs after every call (a `Dispatcher` observer), before the ioreq completes, and turns
them into what the guest and the next daemon see:

* notifies → the `EventRegister` the guest's `\\_SB.NVDR.NEVT` reads through the notify
  port, plus GPE `EVENT_GPE` raised so the guest runs it (`acpi.ssdt.nevt_method`);
* a changed poison set → the hypervisor's poison table (vMCE: guest reads there fault);
* a call that changed health or poison → the state file rewritten (`persist`), so a
  daemon killed right after still comes back with it.

The host changes the same state through QMP (`pmemd.qmp`): `after_host_change` carries out
the same effects right after each command, so a Notify it queued reaches the guest (GPE)
at once, not at the guest's next `_DSM` call.

The state file is written through descriptors opened at start-up (`StateFile`), so saves
still work after `--depriv` has chrooted and dropped root: atomically (temporary file and
rename inside the directory's descriptor) where the daemon may still create files there,
else in place through the file's own descriptor.

`open_media_effects` is the daemon's dsm-handlers part: restore, dirty-shutdown count,
the guest's one scrubber task (its completions go to the log and to every
`scrub_subscribers` callback, e.g. QMP events), clean-stop save.

Event register protocol (one DWORD port read of the notify port = one event):
  bits 0-7 the notify value (0x81), bits 8-23 the NFIT handle (0 root, slot + 1 DIMM);
  0 = nothing pending. An unclaimed port reads all-ones, which NEVT also takes as "none".
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import deque
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Sequence

import structlog
import trio

from acpi.dsm_buffer import NOTIFY_WIDTH, ROOT_HANDLE
from acpi.events import EVENT_GPE, encode_event
from pmemd.config import Config, DsmConfig
from pmemd.dsm.call import Call
from pmemd.dsm.devices import Dimm, Root, slot_to_handle
from pmemd.dsm.dispatcher import Dispatcher
from pmemd.dsm.notify import drain_notifies
from pmemd.dsm.persist import FILE_KIND, FILE_VERSION, StateFileBodyV1, guest_state_bytes, load_state_file
from pmemd.dsm.state_blob import wrap
from pmemd.dsm.scrubber import ScrubCompleted, run_scrubber
from pmemd.dsm.state_blob import StateFormatError
from pmemd.dsm_device import Dispatch, DsmPageDevice
from pmemd.xen.api import DeviceModelHypervisor, PlatformEvents

log = structlog.get_logger("pmemd.dsm.effects")

# Calls whose handlers change state that outlives the daemon (saved after they run).
ROOT_PERSISTENT_FUNCTIONS = frozenset({4, 7, 8})  # clear error, inject, inject clear
DIMM_PERSISTENT_FUNCTIONS = frozenset({10, 17, 18})  # latch, set thresholds, inject SMART
STATE_SUFFIX = ".pmemd-state"
SCRUB_EVENTS = 16  # completed-scrub reports buffered for the logger


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
        self._published: tuple[int, int] | None = None
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
        """Tell the hypervisor the poisoned ranges when they changed since last time."""
        poison = self.root.media.poison
        stamp = (id(poison), poison.version)
        if self.platform is None or stamp == self._published:
            return
        self.platform.set_poison(list(poison))
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


class EventingDsmPageDevice(DsmPageDevice):
    """The DSM page device whose notify register, when read, hands out the next event."""

    def __init__(self, dsm: DsmConfig, dispatch: Dispatch, ram_page: memoryview | None = None, *,
                 events: EventRegister | None = None) -> None:
        super().__init__(dsm, dispatch, ram_page)
        self.events = events if events is not None else EventRegister(0)

    def port_read(self, port: int, size: int) -> int:
        if port == self.dsm.notify_port and size == NOTIFY_WIDTH:
            return self.events.read()
        return super().port_read(port, size)


class StateFile:
    """The guest state file, opened while the daemon may still open it (before `--depriv`).

    Holds the directory and the file open for the daemon's life; `save` never names a path,
    so a chroot or a lost uid does not stop it. Resources: two descriptors, closed by `close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
        except BaseException:
            os.close(self.dir_fd)
            raise

    def save(self, root: Root, dimms: Sequence[Dimm], *, running: bool) -> None:
        """Write the state with its clean-stop marker (`persist`'s file format), durable on return."""
        body = StateFileBodyV1.build({"running": int(running), "state": guest_state_bytes(root, dimms)})
        blob = wrap(FILE_KIND, FILE_VERSION, body)
        try:
            self._replace(blob)
        except PermissionError:  # an unprivileged uid in a directory it cannot write
            self._overwrite(blob)

    def _replace(self, blob: bytes) -> None:
        """Temporary file, fsync, rename over the file, fsync the directory: all-or-nothing."""
        tmp = self.path.name + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
        try:
            _write_all(fd, blob, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)
        fresh = os.open(self.path.name, os.O_RDWR | os.O_CLOEXEC, dir_fd=self.dir_fd)  # the new inode
        os.close(self.fd)
        self.fd = fresh

    def _overwrite(self, blob: bytes) -> None:
        """In place through the held descriptor: the blob, then the length, then fsync."""
        _write_all(self.fd, blob, 0)
        os.ftruncate(self.fd, len(blob))
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def state_path(config: Config) -> Path | None:
    """`[dsm] state_file`, else beside the first NVDIMM's backing file; None without NVDIMMs.

    Beside the backing file, not keyed by domid: health belongs to the DIMM, and a guest
    gets a new domid on every boot.
    """
    if config.dsm.state_file is not None:
        return config.dsm.state_file
    if not config.nvdimms:
        return None
    backing = config.nvdimms[0].backing
    return backing.with_name(backing.name + STATE_SUFFIX)


@contextlib.asynccontextmanager
async def open_media_effects(
    config: Config, dispatcher: Dispatcher, hv: DeviceModelHypervisor | None
) -> AsyncIterator[DsmEffects]:
    """Restore saved state, count a dirty shutdown, run the scrubber, carry out side effects.

    On entry: the state file (`state_path`) is loaded into the devices; if it still says
    "running", every DIMM's health records a dirty shutdown; the file is rewritten as
    "running"; restored poison is published; `run_scrubber` starts. On exit (a clean stop):
    every DIMM's shutdown state reads clean and the file is saved as stopped.

    Errors: `StateFormatError` (naming the file) for a corrupt or newer state file: the
    daemon refuses to start rather than overwrite health it cannot read.
    """
    root = dispatcher.target(ROOT_HANDLE).device
    dimms = [dispatcher.target(slot_to_handle(n.slot)).device for n in config.nvdimms]
    path = state_path(config)
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
    dispatcher.observers.append(effects.after_call)
    try:
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
        dispatcher.observers.remove(effects.after_call)
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
