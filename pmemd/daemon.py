"""The per-guest daemon: a fixed sequence of setup steps, undone in reverse exactly once.

Each step is an async context manager factory taking the `Guest` being set up; it may
add what it creates to the guest (so later steps and the supervisor can use it) and
undoes its own work on exit. `serve_guest` enters them in `STEPS` order on an
AsyncExitStack, reports started once all are in, and on cancellation or failure the
stack unwinds them in reverse — so a failure at any step leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping

import structlog
import trio

from acpi.dsm_buffer import PAGE_SIZE
from pmemd.config import Config
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.dispatcher import Dispatcher
from pmemd.dsm.label_file import open_label_stores
from pmemd.dsm.label_store import LabelStore
from pmemd.dsm.media import MediaErrors
from pmemd.dmacpi import Publication, publish_tables
from pmemd.dsm_device import DsmPageDevice
from pmemd.dsm_effects import DsmEffects, EventingDsmPageDevice, open_media_effects
from pmemd.ioreq.server import IoreqServer
from pmemd.lifecycle import RunOptions
from pmemd.pmem_map import lock_backing, map_pmem
from pmemd.storage import MapReport
from pmemd.qemu_transport import DoorbellServer, GuestRamPage
from pmemd.tables import Tables, build_tables
from pmemd.xen.api import DeviceModelHypervisor
from pmemd.xen.errors import HypervisorError, ProtocolError
from pmemd.state_key import open_daemon_client, report_running, report_state
from pmemd.xen.sim_client import SimDeviceModel
from pmemd.xenstore import XenstoreClient

log = structlog.get_logger("pmemd.daemon")


@dataclass
class Guest:
    """One guest as the daemon serves it; steps fill it in as they complete."""

    config: Config
    hypervisor_socket: str
    nursery: trio.Nursery
    tables: Tables
    hv: DeviceModelHypervisor | None = None
    labels: Mapping[int, LabelStore] = field(default_factory=dict)
    dispatcher: Dispatcher | None = None
    effects: DsmEffects | None = None  # notifies, vMCE poison, saved health (dsm-handlers)
    device: DsmPageDevice | None = None
    server: IoreqServer | None = None
    xenstore: XenstoreClient | None = None  # [xen] xenstore's connection (an embedded one: in-process)
    publication: Publication | None = None  # what "publish-tables" put in dm-acpi
    failed_step: str | None = None  # the setup step that failed (the state key's error-code)
    pmem_maps: dict[int, MapReport] = field(default_factory=dict)  # slot -> what "map-pmem" populated
    doorbell: DoorbellServer | None = None  # [dsm] transport = "qemu" instead of `server`
    completed: list[str] = field(default_factory=list)  # names of the steps set up, in order
    options: RunOptions = field(default_factory=RunOptions)  # `pmemd run`'s lifecycle flags
    serving: bool = False  # every step is in and the guest may run: a stop from here on saves state
    qmp: Any = None  # the QmpServer while the "qmp" step is in (pmemd.qmp.server)


Step = Callable[[Guest], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def open_hypervisor(guest: Guest) -> AsyncIterator[None]:
    """The hypervisor handles (libxendevicemodel, foreign memory, event channels)."""
    if guest.config.dsm.transport == "qemu":  # QEMU owns the guest: no hypervisor to talk to
        yield
        return
    guest.hv = await SimDeviceModel.connect(guest.hypervisor_socket, guest.config.domid)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await guest.hv.aclose()


@contextlib.asynccontextmanager
async def open_xenstore(guest: Guest) -> AsyncIterator[None]:
    """The connection to xenstored at `[xen] xenstore`.

    `"embedded"` runs a private xenstored in this process (socket `embedded_xenstore_path`,
    logged, so `xenstore-ls` can look): the state keys live there. No toolstack shares it,
    so no dm-acpi buffer exists and publication is skipped (`dmacpi.publish_tables`).
    """
    path = guest.config.xen.xenstore
    if path != "embedded":
        async with _connected(guest, path):
            yield
        return
    from pmemd.sim.xenstored import serve_xenstored

    socket = embedded_xenstore_path(guest.config.domid)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_xenstored, socket)
        log.info("embedded xenstored", socket=socket)
        try:
            async with _connected(guest, socket):
                yield
        finally:
            nursery.cancel_scope.cancel()


def embedded_xenstore_path(domid: int) -> str:
    """Where an embedded xenstored listens: the runtime directory, one socket per daemon."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(runtime, f"pmemd-{domid}-{os.getpid()}-xenstored.sock")


@contextlib.asynccontextmanager
async def _connected(guest: Guest, path: str) -> AsyncIterator[None]:
    async with open_daemon_client(path) as xenstore:
        guest.xenstore = xenstore
        try:
            yield
        finally:
            guest.xenstore = None


@contextlib.asynccontextmanager
async def open_dsm_handlers(guest: Guest) -> AsyncIterator[None]:
    """Label stores (one file each, held open), the dispatcher over them, and its side
    effects: saved health and poison restored, the ARS scrubber, notifies (`dsm_effects`)."""
    with contextlib.ExitStack() as stack:
        guest.labels = open_label_stores(guest.config, stack)
        media = MediaErrors.create(rate=guest.config.dsm.scrub_rate, now=trio.current_time)
        guest.dispatcher = build_dispatcher(guest.config, guest.labels, media=media)
        async with open_media_effects(guest.config, guest.dispatcher, guest.hv) as guest.effects:
            yield


@contextlib.asynccontextmanager
async def serve_dsm_page(guest: Guest) -> AsyncIterator[None]:
    """The ioreq server for the DSM page and notify port; enabled when this step is in."""
    if guest.config.dsm.transport == "qemu":
        async with _serve_doorbell(guest):
            yield
        return
    assert guest.hv is not None and guest.dispatcher is not None
    dsm = guest.config.dsm
    ram_page = None
    if dsm.mode == "ram":
        ram_page = (await guest.hv.map_foreign(dsm.page // PAGE_SIZE, 1))[:PAGE_SIZE]
    events = guest.effects.events if guest.effects is not None else None
    guest.device = EventingDsmPageDevice(dsm, guest.dispatcher.dispatch, ram_page, events=events)
    guest.server = IoreqServer(guest.hv, guest.device, guest.device.io_ranges())
    async with trio.open_nursery() as nursery:
        await nursery.start(guest.server.run)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _serve_doorbell(guest: Guest) -> AsyncIterator[None]:
    """The QEMU front end: doorbell socket plus the page in the guest-RAM file."""
    assert guest.dispatcher is not None and guest.config.dsm.ram is not None
    ram = GuestRamPage(guest.config.dsm.ram, guest.config.dsm.page)
    guest.doorbell = DoorbellServer(guest.config.dsm, guest.dispatcher.dispatch, ram)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(guest.doorbell.run)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    finally:
        log.info("doorbell statistics", **guest.doorbell.statistics().summary())
        ram.close()


@contextlib.asynccontextmanager
async def serve_qmp(guest: Guest) -> AsyncIterator[None]:
    """The QMP socket at `[qmp] socket` (`pmemd.qmp`): libxl's and operators' commands, events."""
    from pmemd.qmp.service import open_qmp

    async with open_qmp(guest) as server:
        guest.qmp = server
        try:
            yield
        finally:
            guest.qmp = None


@contextlib.asynccontextmanager
async def deprivilege(guest: Guest) -> AsyncIterator[None]:
    """With `--depriv`: drop root once every privileged step is in (`pmemd.depriv`).

    Placed after everything that opens handles, files or locks and before the state key
    says "running" (the toolstack unpauses the guest only then), so no guest input is
    read with root. Nothing to undo: privileges are gone for the rest of the process.
    """
    if guest.options.depriv is not None:
        from pmemd.depriv import drop_privileges

        drop_privileges(guest.options.depriv)
    yield


@contextlib.asynccontextmanager
async def device_state(guest: Guest) -> AsyncIterator[None]:
    """`--resume FILE`: load the saved device state into the freshly built devices.
    `--save FILE`: on a stop after the daemon ran, write it — this step's exit comes after the
    ioreq server's (reverse order), so the guest can no longer change what is saved. A stop
    before the daemon ran saves nothing (varstored's rule). With `--chroot` both paths are
    inside the chroot, whose directory must be writable by `--uid` for the save.
    """
    options = guest.options
    if options.resume is None and options.save is None:
        yield
        return
    from pmemd import savefile
    from pmemd.dsm.devices import ROOT_HANDLE, slot_to_handle

    assert guest.dispatcher is not None
    root = guest.dispatcher.target(ROOT_HANDLE).device  # type: ignore[union-attr]
    dimms = [guest.dispatcher.target(slot_to_handle(n.slot)).device for n in guest.config.nvdimms]  # type: ignore[union-attr]
    if options.resume is not None:
        savefile.load(options.resume, guest.config, root, dimms)
        log.info("device state resumed", file=str(options.resume))
    try:
        yield
    finally:
        if options.save is not None and guest.serving:
            size = savefile.save(options.save, guest.config, root, dimms)
            log.info("device state saved", file=str(options.save), bytes=size)


# Setup order (the toolstack issue's order): hypervisor handles, handlers, ioreq server
# (create, map pages, bind channels, map ranges, enable); then table publication, pmem
# mapping and the "running" state key, as those steps land. "depriv" stays after every
# privileged step and before the "running" state key.
STEPS: list[tuple[str, Step]] = [
    ("xenstore", open_xenstore),
    ("state", report_state),  # "initialising"; on exit "error" + error-code, or removed
    ("hypervisor", open_hypervisor),
    ("backing-lock", lock_backing),  # before anything opens a backing file (label journals)
    ("dsm-handlers", open_dsm_handlers),
    ("device-state", device_state),  # --resume on the way in; --save on the way out, after the ioreq server
    ("ioreq-server", serve_dsm_page),
    ("publish-tables", publish_tables),  # dm-acpi NFIT + NVDR body, before the guest boots
    ("map-pmem", map_pmem),  # after table publication; FIEMAP opens the files by path: before chroot
    ("qmp", serve_qmp),  # control socket: created before depriv (its directory may be root's)
    ("depriv", deprivilege),  # after every privileged step; then the state key says "running"
]


DOMAIN_POLL_INTERVAL = 1.0  # seconds between existence checks when no xenstore watch is available


async def domain_gone(guest: Guest) -> bool:
    """The existence check: True once the domain is destroyed or the hypervisor is unreachable."""
    assert guest.hv is not None
    try:
        info = await guest.hv.domain_info()
    except HypervisorError as e:
        if e.errno == errno.ESRCH:
            return True
        raise
    except (ProtocolError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        return True
    return info.state == "destroyed"


async def watch_domain(guest: Guest) -> None:
    """Return when the domain has disappeared.

    With a xenstore connection (`guest.xenstore`, once published) this waits on the
    `@releaseDomain` watch, which names no domain, and re-checks existence on each event;
    without one it checks existence every `DOMAIN_POLL_INTERVAL`.
    """
    if guest.hv is None:  # [dsm] transport = "qemu": no domain to watch, serve until cancelled
        await trio.sleep_forever()
    xenstore = getattr(guest, "xenstore", None)
    if xenstore is not None:
        async with xenstore.watching("@releaseDomain") as events:
            async for _ in events:
                if await domain_gone(guest):
                    return
    while not await domain_gone(guest):
        await trio.sleep(DOMAIN_POLL_INTERVAL)


async def serve_guest(
    config: Config,
    hypervisor_socket: str,
    *,
    steps: list[tuple[str, Step]] | None = None,
    options: RunOptions | None = None,
    task_status: trio.TaskStatus[Guest] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Set up every step for domain `config.domid`, report started, serve until cancelled
    or until the domain disappears (then tear down and return)."""
    async with trio.open_nursery() as nursery:
        guest = Guest(config, hypervisor_socket, nursery, build_tables(config))
        if options is not None:
            guest.options = options
        async with contextlib.AsyncExitStack() as stack:
            for name, step in STEPS if steps is None else steps:
                await stack.enter_async_context(_logged(name, step, guest))
            await report_running(guest)  # state key "running": every step is in, unpause may follow
            log.info("running", mode=config.dsm.mode, page=hex(config.dsm.page),
                     nvdimms=len(config.nvdimms), labels=sorted(guest.labels))
            task_status.started(guest)
            guest.serving = True
            await watch_domain(guest)
            log.info("domain gone: tearing down")
        nursery.cancel_scope.cancel()  # steps are undone; stop what they left in the nursery


@contextlib.asynccontextmanager
async def _logged(name: str, step: Step, guest: Guest) -> AsyncIterator[None]:
    """Enter one step, recording it in `guest.completed` while it is in place."""
    entered = False
    try:
        async with step(guest):
            entered = True
            guest.completed.append(name)
            try:
                yield
            finally:
                guest.completed.remove(name)
    except Exception as e:
        if not entered:
            guest.failed_step = name
            log.error("setup step failed", step=name, error=str(e))
        raise
    if entered:
        log.info("step undone", step=name)
