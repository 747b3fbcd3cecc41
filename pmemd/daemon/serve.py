"""Serving one guest: enter every setup step, report running, watch the domain, tear down.

`serve_guest` enters `steps.STEPS` in order on an AsyncExitStack, reports started once all
are in, and on cancellation, failure or the domain's disappearance the stack unwinds them
in reverse — so a failure at any step leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator

import structlog
import trio

from pmemd.config import Config
from pmemd.xen.errors import HypervisorError, ProtocolError

from .guest import Guest, RunOptions, Step
from .steps import STEPS, report_running
from .tables import build_tables

log = structlog.get_logger("pmemd.daemon")

DOMAIN_POLL_INTERVAL = 1.0  # seconds between existence checks when no xenstore watch is available
RELEASE_BACKSTOP = 5.0  # seconds between existence checks while the @releaseDomain watch is quiet


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

    With a shared xenstored this waits on the `@releaseDomain` watch, which names no
    domain, and re-checks existence on each event and after `RELEASE_BACKSTOP` without one
    (a release that raced the watch's registration, or a domain still dying at its event);
    without one it checks existence every `DOMAIN_POLL_INTERVAL`. An embedded xenstored counts
    as none: no toolstack releases the domain there, so its watch fires only at registration.
    """
    if guest.hv is None:  # [dsm] transport = "qemu": no domain to watch, serve until cancelled
        await trio.sleep_forever()
    if guest.xenstore is not None and guest.config.xen.xenstore != "embedded":
        async with guest.xenstore.watching("@releaseDomain") as events:
            while not await domain_gone(guest):
                # The watch is the fast path; the backstop catches a release that raced the
                # watch's registration, or a domain still dying when its event was handled.
                with trio.move_on_after(RELEASE_BACKSTOP):
                    try:
                        await events.receive()
                    except trio.EndOfChannel:  # the watch is gone: fall back to polling
                        break
            else:
                return
    while not await domain_gone(guest):  # noqa: ASYNC110 - polling the hypervisor is the fallback
        await trio.sleep(DOMAIN_POLL_INTERVAL)


async def serve_guest(
    config: Config,
    hypervisor: str,
    *,
    steps: list[tuple[str, Step]] | None = None,
    options: RunOptions | None = None,
    task_status: trio.TaskStatus[Guest] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Set up every step for domain `config.domid` on backend `hypervisor` (`[xen] hypervisor`),
    report started, serve until cancelled or until the domain disappears (then tear down and return)."""
    async with trio.open_nursery() as nursery:
        guest = Guest(config, hypervisor, nursery, build_tables(config), options or RunOptions())
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
