"""The daemon's readiness and state keys in the guest's xenstore tree.

Following Citrix vGPU demu (reference: standalone-device-models.md §1), whose toolstack waits on
``/local/domain/D/vgpu/state``: pmemd writes

- ``/local/domain/<D>/pmemd/state``: ``initialising`` as soon as it has a xenstore connection,
  ``running`` once the ioreq server is enabled, the tables are published and (when that step
  exists) the pmem is mapped -- i.e. when the toolstack may unpause the guest -- or ``error``;
- ``/local/domain/<D>/pmemd/error-code``: with ``error``, a short symbolic code: the
  ``code`` of a refusal (e.g. ``dm-acpi-too-small``) or ``<step>-failed``.

The ``pmemd`` directory is dom0-owned and guest read-only (libxl's "roperm" for the domain home),
so the guest can watch it but never forge readiness. On a clean exit (SIGTERM, cancellation) the
daemon removes the directory (varstored removed its key via ExecStopPost; uefistored and we do
it ourselves); after an error it leaves ``error``/``error-code`` for the toolstack to read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import structlog
import trio

from pmemd.xenstore import Access, NoEntryError, Perm, XenstoreClient, XenstoreError
from pmemd.xenstore.wire import domain_path

log = structlog.get_logger("pmemd.state_key")

INITIALISING = "initialising"
RUNNING = "running"
ERROR = "error"
STATES = (INITIALISING, RUNNING, ERROR)
CLEANUP_TIMEOUT = 5.0  # seconds an exit path may spend on xenstore


def guest_read_only(domid: int) -> list[Perm]:
    """dom0 owns it, other domains are denied, the guest may read (libxl's "roperm")."""
    return [Perm(0, Access.NONE), Perm(domid, Access.READ)]


@contextlib.asynccontextmanager
async def open_daemon_client(path: str) -> AsyncIterator[XenstoreClient]:
    """:func:`pmemd.xenstore.open_client` whose reader outlives cancellation until the block exits.

    The daemon is stopped by cancelling everything at once (SIGTERM); its steps then remove their
    keys in shielded scopes, which needs replies -- so the reader task is shielded and ended here,
    after the block. (Uses the client's reader/close internals; a ``shield_reader`` option on
    ``open_client`` would be the tidy home for this.)
    """
    stream = await trio.open_unix_socket(path)
    async with stream:
        client = XenstoreClient(stream)
        reader_scope = trio.CancelScope(shield=True)

        async def read() -> None:
            with reader_scope:
                await client._reader()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                yield client
            finally:
                client._close("client closed")
                reader_scope.cancel()


async def cleanup(what: str, fn: Callable[[], Awaitable[None]]) -> None:
    """Run an exit-path xenstore update even while cancelled, bounded; log if it fails."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT) as bound:
        try:
            await fn()
        except XenstoreError as e:
            log.warning(f"{what} failed", error=str(e))
    if bound.cancelled_caught:
        log.warning(f"{what} timed out", seconds=CLEANUP_TIMEOUT)


def state_dir(domid: int) -> str:
    """``/local/domain/<D>/pmemd``: the daemon's own keys."""
    return f"{domain_path(domid)}/pmemd"


def state_key_path(domid: int) -> str:
    return f"{state_dir(domid)}/state"


def error_code_path(domid: int) -> str:
    return f"{state_dir(domid)}/error-code"


def error_code(exc: BaseException, step: str | None) -> str:
    """A refusal's own ``code`` if it has one (looking inside exception groups, as nurseries
    between the failing step and this one wrap it), else ``<step>-failed``."""
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
            continue
        code = getattr(current, "code", None)
        if isinstance(code, str) and code:
            return code
    return f"{step or 'service'}-failed"


async def write_state(xs: XenstoreClient, domid: int, state: str, code: str | None = None) -> None:
    """Set the state (and error-code, or remove a stale one) in one transaction, guest read-only."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    perms = guest_read_only(domid)

    async def body(tx) -> None:  # type: ignore[no-untyped-def]
        await tx.mkdir(state_dir(domid))
        await tx.set_perms(state_dir(domid), perms)
        if code is None:
            await tx.rm(error_code_path(domid))
        else:
            await tx.write(error_code_path(domid), code)
            await tx.set_perms(error_code_path(domid), perms)
        await tx.write(state_key_path(domid), state)
        await tx.set_perms(state_key_path(domid), perms)

    await xs.run_transaction(body)
    log.info("state key", path=state_key_path(domid), state=state, **({"error_code": code} if code else {}))


async def clear_state(xs: XenstoreClient, domid: int) -> None:
    """Remove the daemon's keys (clean exit)."""
    try:
        await xs.rm(state_dir(domid))
    except NoEntryError:
        pass
    log.info("state keys removed", path=state_dir(domid))


async def wait_state(xs: XenstoreClient, domid: int, states: Iterable[str] = (RUNNING, ERROR)) -> str:
    """Wait (by watch, as the toolstack does) until the state is one of ``states``; return it."""
    wanted = set(states)
    async with xs.watching(state_key_path(domid)) as events:
        async for _ in events:
            try:
                state = (await xs.read(state_key_path(domid))).decode()
            except NoEntryError:
                continue
            if state in wanted:
                return state
    raise XenstoreError("xenstore connection closed while waiting for the state key")


def only_cancelled(exc: BaseException) -> bool:
    """Whether `exc` is cancellation alone (a stop), not a failure with a cause to report."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def server_key_path(domid: int, name: str) -> str:
    return f"{state_dir(domid)}/ioreq-server/{name}"


async def recorded_server(xs: XenstoreClient, domid: int, name: str) -> int | None:
    """The ioreq server id a predecessor recorded under `pmemd/ioreq-server/<name>` (real Xen
    keeps a killed daemon's servers), or None."""
    try:
        return int(await xs.read(server_key_path(domid, name)))
    except (NoEntryError, ValueError):
        return None


async def record_server(xs: XenstoreClient, domid: int, name: str, server_id: int) -> None:
    """Record an ioreq server id (guest read-only), for a restarted daemon or `pmemd release`."""
    path = server_key_path(domid, name)
    await xs.write(path, str(server_id))
    await xs.set_perms(path, guest_read_only(domid))


async def recorded_servers(xs: XenstoreClient, domid: int) -> dict[str, int]:
    out = {}
    try:
        names = await xs.directory(f"{state_dir(domid)}/ioreq-server")
    except NoEntryError:
        return {}
    for name in names:
        server = await recorded_server(xs, domid, name)
        if server is not None:
            out[name] = server
    return out
