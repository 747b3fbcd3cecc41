"""The per-guest setup steps, in order; the only code that sees `Guest`.

Each step is an async context manager factory taking the `Guest` being set up: it calls
the services (which take plain values), records what they built on the guest for later
steps, and undoes its own work on exit. `serve.serve_guest` enters them in `STEPS` order,
so a failure at any step unwinds the ones before it and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator

import structlog
import trio

from acpi.dsm_buffer import PAGE_SIZE
from pmemd.config import Config, ConfigError
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.dispatcher import Phase
from pmemd.dsm.media import MediaErrors
from pmemd.ioreq.server import IoreqServer
from pmemd.xen.api import DomainInfo
from pmemd.xen.backends import backend_name, connect_hypervisor

from . import dmacpi, pmem_map, state_key
from .dsm_effects import open_media_effects
from .firmware_file import open_firmware_file
from .frontends.qemu_doorbell import DoorbellServer, GuestRamPage
from .frontends.xen_page import DsmPageDevice
from .guest import Guest, Step
from .label_file import open_label_stores
from .pmem_file import open_pmem_stores
from .security_service import SecurityService, open_security_files

log = structlog.get_logger("pmemd.daemon")


@contextlib.asynccontextmanager
async def open_xenstore(guest: Guest) -> AsyncIterator[None]:
    """The connection to xenstored at `[xen] xenstore`.

    `"embedded"` runs a private xenstored in this process (socket `embedded_xenstore_path`,
    logged, so `xenstore-ls` can look): the state keys live there. No toolstack shares it,
    so no dm-acpi buffer exists and publication is skipped (`publish_tables`).
    """
    path = guest.config.xen.xenstore
    if path != "embedded":
        async with _connected(guest, path):
            yield
        return
    from pmemd.xenstored.server import serve_xenstored

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
    async with state_key.open_daemon_client(path) as xenstore:
        guest.xenstore = xenstore
        try:
            yield
        finally:
            guest.xenstore = None


@contextlib.asynccontextmanager
async def report_state(guest: Guest) -> AsyncIterator[None]:
    """State key ``initialising`` now; on exit ``error`` + error-code, or the keys removed."""
    xs, domid = guest.xenstore, guest.config.domid
    if xs is None:
        yield
        return
    await state_key.write_state(xs, domid, state_key.INITIALISING)
    try:
        yield
    except BaseException as exc:
        if state_key.only_cancelled(exc):
            await state_key.cleanup("removing the state keys", lambda: state_key.clear_state(xs, domid))
        else:
            code = state_key.error_code(exc, guest.failed_step)
            await state_key.cleanup("writing the error state",
                                    lambda: state_key.write_state(xs, domid, state_key.ERROR, code))
        raise
    await state_key.cleanup("removing the state keys", lambda: state_key.clear_state(xs, domid))


async def report_running(guest: Guest) -> None:
    """State key ``running``: every setup step is in place, so the guest may be unpaused."""
    if guest.xenstore is not None:
        await state_key.write_state(guest.xenstore, guest.config.domid, state_key.RUNNING)


@contextlib.asynccontextmanager
async def open_hypervisor(guest: Guest) -> AsyncIterator[None]:
    """The hypervisor handles (libxendevicemodel, foreign memory, event channels)."""
    if guest.config.dsm.transport == "qemu":  # QEMU owns the guest: no hypervisor to talk to
        yield
        return
    guest.hv = await connect_hypervisor(guest.hypervisor, guest.config.domid)
    try:
        if backend_name(guest.hypervisor) == "xen":  # the toolstack built the domain from its own config
            check_domain_layout(guest.config, await guest.hv.domain_info())
        yield
    finally:
        with trio.CancelScope(shield=True):
            await guest.hv.aclose()


def check_domain_layout(config: Config, info: DomainInfo) -> None:
    """Refuse a config whose vCPUs or RAM contradict the domain's (naming the field): the tables
    and the DSM page were placed for the config's memory map."""
    if info.vcpus != config.guest.vcpus:
        raise ConfigError("guest.vcpus", f"is {config.guest.vcpus} but domain {info.domid} has {info.vcpus} vCPUs")
    ram, domain_ram = config.guest.lowmem + config.guest.highmem, info.lowmem + info.highmem
    if ram != domain_ram:
        name = "guest.highmem" if config.guest.highmem else "guest.lowmem"
        raise ConfigError(name, f"the config gives the guest {ram >> 20} MiB of RAM (lowmem + highmem) but "
                                f"domain {info.domid} has {domain_ram >> 20} MiB")


@contextlib.asynccontextmanager
async def lock_backing(guest: Guest) -> AsyncIterator[None]:
    """An exclusive lock on every backing file, before anything opens one (label journals)."""
    with pmem_map.lock_backings(guest.config):
        yield


@contextlib.asynccontextmanager
async def open_dsm_handlers(guest: Guest) -> AsyncIterator[None]:
    """Label and PMEM stores (files held open), the dispatcher over them, and its side
    effects: saved health and poison restored, the ARS scrubber, notifies (`dsm_effects`),
    the DIMMs' firmware state (`firmware_file`); each DIMM's security state powered on from
    its file, and the overwriter (`security_service`) — loaded before the effects publish
    poison, so a locked DIMM's range is refused from the start."""
    with contextlib.ExitStack() as stack:
        guest.labels = open_label_stores(guest.config, stack)
        pmem = open_pmem_stores(guest.config, stack)
        media = MediaErrors.create(rate=guest.config.dsm.scrub_rate, now=trio.current_time)
        guest.handlers = build_dispatcher(guest.config, guest.labels, media=media, pmem=pmem)
        files = stack.enter_context(open_security_files(guest.config, guest.handlers.dimms))
        guest.security = security = SecurityService(guest.handlers.dimms, guest.labels, files)
        async with open_media_effects(guest.config, guest.handlers, guest.hv) as guest.effects:
            with open_firmware_file(guest.config, guest.handlers):
                security.media_changed.append(guest.effects.publish_poison)
                with guest.handlers.dispatcher.observing(Phase.EFFECTS, security.after_call):
                    async with trio.open_nursery() as nursery:
                        await nursery.start(security.run)
                        try:
                            yield
                        finally:
                            nursery.cancel_scope.cancel()


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
    from . import savefile

    assert guest.handlers is not None
    root, dimms = guest.handlers.root, list(guest.handlers.dimms.values())
    if options.resume is not None:
        savefile.load(options.resume, guest.config, root, dimms)
        if guest.security is not None:
            guest.security.wake_all()
        log.info("device state resumed", file=str(options.resume))
    try:
        yield
    finally:
        if options.save is not None and guest.serving:
            size = savefile.save(options.save, guest.config, root, dimms)
            log.info("device state saved", file=str(options.save), bytes=size)


@contextlib.asynccontextmanager
async def serve_dsm_page(guest: Guest) -> AsyncIterator[None]:
    """The DSM front end: the ioreq server for the DSM page and notify port (enabled when
    this step is in), or with `[dsm] transport = "qemu"` the doorbell."""
    if guest.config.dsm.transport == "qemu":
        async with _serve_doorbell(guest):
            yield
        return
    assert guest.hv is not None and guest.handlers is not None and guest.effects is not None
    dsm = guest.config.dsm
    ram_page = None
    if dsm.mode == "ram":
        if dsm.page + PAGE_SIZE <= guest.config.guest.lowmem:
            ram_page = (await guest.hv.map_foreign(dsm.page // PAGE_SIZE, 1))[:PAGE_SIZE]
        else:  # in the MMIO hole: a frame pmemd populates (real Xen), so only the notify traps
            from .pmem_mirror import guest_frames

            view, adopted = await guest_frames(guest.hv, dsm.page, PAGE_SIZE)
            ram_page = view[:PAGE_SIZE]
            log.info("dsm page populated in the MMIO hole", page=hex(dsm.page), adopted=adopted)
    guest.device = DsmPageDevice(dsm, guest.handlers.dispatcher.dispatch, ram_page, events=guest.effects.events)
    guest.server = IoreqServer(guest.hv, guest.device, guest.device.io_ranges(),
                               adopt=await recorded_server(guest, "dsm"))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(guest.server.run)
            await record_server(guest, "dsm", guest.server.server_id)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    finally:
        summary = guest.device.stats.summary()
        traps = guest.server.statistics().by_kind
        served = sum(n for kind, n in traps.items() if kind != "invalidate")
        per_call = served - traps.get("pio-read", 0)  # notify-port reads are events (and trap benchmarks)
        log.info("dsm statistics", mode=dsm.mode, traps=served, traps_by_kind=dict(traps),
                 traps_per_call=round(per_call / summary["calls"], 2) if summary["calls"] else None, **summary)


async def recorded_server(guest: Guest, name: str) -> int | None:
    """On real Xen, the ioreq server a killed predecessor left (xenstore `pmemd/ioreq-server/<name>`)."""
    if guest.xenstore is None or backend_name(guest.hypervisor) != "xen":
        return None
    server = await state_key.recorded_server(guest.xenstore, guest.config.domid, name)
    if server is not None:
        log.warning("adopting the ioreq server a previous daemon left", server=server, name=name)
    return server


async def record_server(guest: Guest, name: str, server: int | None) -> None:
    """On real Xen, record a server id so a restarted daemon and `pmemd release` find it."""
    if guest.xenstore is not None and server is not None and backend_name(guest.hypervisor) == "xen":
        await state_key.record_server(guest.xenstore, guest.config.domid, name, server)


@contextlib.asynccontextmanager
async def _serve_doorbell(guest: Guest) -> AsyncIterator[None]:
    """The QEMU front end: doorbell socket plus the page in the guest-RAM file."""
    assert guest.handlers is not None and guest.config.dsm.ram is not None
    ram = GuestRamPage(guest.config.dsm.ram, guest.config.dsm.page)
    guest.doorbell = DoorbellServer(guest.config.dsm, guest.handlers.dispatcher.dispatch, ram)
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
async def publish_tables(guest: Guest) -> AsyncIterator[None]:
    """dm-acpi: publish the NFIT and NVDR body before the guest boots; remove them on exit."""
    if guest.xenstore is None or guest.config.xen.xenstore == "embedded":
        log.warning("dm-acpi not published: an embedded xenstored has no toolstack to reserve the buffer")
        yield
        return
    if backend_name(guest.hypervisor) == "xen":
        log.info("dm-acpi not published: upstream hvmloader reads no dm-acpi; the tables reach the guest "
                 "through xl's acpi_firmware= (pmemd acpi writes ACPI.bin)")
        yield
        return
    if not guest.config.nvdimms or guest.hv is None:
        log.info("dm-acpi not published", reason="no NVDIMMs" if guest.hv else "no hypervisor (QEMU owns the tables)")
        yield
        return
    xs, domid = guest.xenstore, guest.config.domid
    publication = await dmacpi.publish(xs, guest.hv, domid, dmacpi.standard_blobs(guest.tables))
    guest.publication = publication
    try:
        yield
    finally:
        guest.publication = None
        await state_key.cleanup("removing the dm-acpi entries", lambda: dmacpi.unpublish(xs, domid, publication))


@contextlib.asynccontextmanager
async def map_pmem(guest: Guest) -> AsyncIterator[None]:
    """Each NVDIMM's guest PMEM from its backing file. `direct`: host pmem frames, no undo (Xen
    has no unmap, the frames go back when the domain is destroyed). `mirrored`: populated
    frames written back on flush hints and on the way out (`pmem_mirror`)."""
    if guest.config.pmem.mode == "mirrored":
        if guest.hv is None:
            raise ConfigError("pmem.mode", "\"mirrored\" needs a hypervisor (not the QEMU transport)")
        from .pmem_mirror import open_mirrors

        adopt = await recorded_server(guest, "flush")
        async with open_mirrors(guest.config, guest.hv, adopt) as (guest.mirrors, server):
            await record_server(guest, "flush", server.server_id if server else None)
            yield
        return
    guest.pmem_maps = await pmem_map.map_all(guest.config, guest.hv)
    yield


@contextlib.asynccontextmanager
async def serve_qmp(guest: Guest) -> AsyncIterator[None]:
    """The QMP socket at `[qmp] socket` (`pmemd.qmp`): libxl's and operators' commands, events.

    With the QEMU transport QEMU is the guest's device model and owns its QMP socket (libxl
    talks to it), so nothing is served.
    """
    options = guest.options
    if guest.config.dsm.transport == "qemu":
        if options.early_qmp is not None:
            options.early_qmp.close()
        log.info("qmp not served: QEMU owns the guest's monitor ([dsm] transport = \"qemu\")")
        yield
        return
    from .qmp_service import open_qmp

    assert guest.handlers is not None and guest.effects is not None
    hv, ioreq = guest.hv, guest.server

    async def set_serving(enabled: bool) -> None:
        if hv is not None and ioreq is not None and ioreq.server_id is not None:
            await hv.set_ioreq_server_state(ioreq.server_id, enabled)

    async with open_qmp(guest.config, guest.handlers, guest.labels, guest.effects, set_serving,
                        on_quit=guest.nursery.cancel_scope.cancel, early=options.early_qmp,
                        autostart=not options.paused, security=guest.security) as server:
        guest.qmp = server
        try:
            yield
        finally:
            guest.qmp = None


@contextlib.asynccontextmanager
async def deprivilege(guest: Guest) -> AsyncIterator[None]:
    """With `--depriv`: drop root once every privileged step is in (`pmemd.process.depriv`).

    Placed after everything that opens handles, files or locks and before the state key
    says "running" (the toolstack unpauses the guest only then), so no guest input is
    read with root. Nothing to undo: privileges are gone for the rest of the process.
    """
    if guest.options.depriv is not None:
        from pmemd.process.depriv import drop_privileges

        drop_privileges(guest.options.depriv)
    yield


# Setup order: hypervisor handles, handlers, ioreq server (create, map pages, bind channels,
# map ranges, enable); then table publication, pmem mapping and the "running" state key.
# "depriv" stays after every privileged step and before the "running" state key.
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
