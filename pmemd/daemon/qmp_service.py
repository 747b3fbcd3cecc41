"""The QMP server wired to one served guest (the daemon's "qmp" step runs it).

It reaches the guest through what earlier steps built: the dispatcher's devices (root and
DIMMs), the label stores, and a switch for the ioreq server (stop/cont disable and enable
it through the hypervisor). `quit` calls `on_quit`, so teardown runs as on SIGTERM.

After every command the DSM side effects run (`DsmEffects.after_host_change`): a Notify a
command queued raises the guest's GPE at once and changed state is saved. Scrub completions
come from the guest's one scrubber (dsm-handlers' `DsmEffects.scrub_subscribers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import structlog
import trio

from pmemd.config import Config
from pmemd.dsm.build import DsmHandlers
from pmemd.dsm.call import Call
from pmemd.dsm.dispatcher import Phase
from pmemd.dsm.label_store import LabelStore
from pmemd.dsm.scrub import ScrubCompleted
from pmemd.qmp.control import GuestControl, RunState
from pmemd.qmp.early import EarlyQmp
from pmemd.qmp.events import NotifyWatcher, scrub_event
from pmemd.qmp.server import QmpServer

from .dsm_effects import DsmEffects
from .savefile import GuestStateFiles
from .security_service import SecurityService

log = structlog.get_logger("pmemd.qmp")


@contextlib.asynccontextmanager
async def open_qmp(
    config: Config,
    handlers: DsmHandlers,
    labels: Mapping[int, LabelStore],
    effects: DsmEffects,
    set_serving: Callable[[bool], Awaitable[None]],
    *,
    on_quit: Callable[[], None],
    early: EarlyQmp | None = None,
    autostart: bool = True,
    security: SecurityService | None = None,
) -> AsyncIterator[QmpServer]:
    """Serve QMP on the config's `[qmp] socket` while the block runs.

    `autostart=False` is QEMU's -S: the ioreq server is disabled and the state reads
    `prelaunch` until `cont`. The listener `pmemd run` bound at exec (`early`) is adopted
    with its clients. `security` saves the security files after a QMP reset and restarts an
    overwrite a loaded device state has in flight.
    """
    root, dimms = handlers.root, dict(handlers.dimms)
    server: QmpServer
    control = GuestControl(
        config, root, dimms, labels, set_serving,
        emit=lambda name, data: server.emit(name, data),
        request_quit=lambda: server.request_quit(),
        state_files=GuestStateFiles(config, root, dimms.values(),
                                    after_load=None if security is None else security.wake_all),
        save_security=None if security is None else security.save,
    )
    watcher = NotifyWatcher(root, dimms, lambda name, data: server.emit(name, data))

    def after_command(name: str) -> None:
        watcher.check()  # first: it only peeks at the queues the effects drain
        effects.after_host_change(persist=not name.startswith("query-"))

    def after_call(call: Call) -> None:
        watcher.check()

    def scrub_completed(done: ScrubCompleted) -> None:
        server.emit("PMEMD_SCRUB_COMPLETED", scrub_event(done))

    server = QmpServer(control, config.qmp_socket, on_quit=on_quit, after_command=after_command, early=early)
    if not autostart:
        await control.set_runstate(RunState.PRELAUNCH)
    with handlers.dispatcher.observing(Phase.WATCH, after_call):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            effects.scrub_subscribers.append(scrub_completed)  # the guest's one scrubber reports to us too
            try:
                yield server
            finally:
                effects.scrub_subscribers.remove(scrub_completed)
                nursery.cancel_scope.cancel()
