"""Process lifetime: run a trio main until it ends or SIGTERM/SIGINT arrives, then exit 0.

Signal handlers only wake a trio task (trio's signal receiver); that task cancels the
main nursery, so every service tears down in reverse order through its own `finally`.
A request in flight finishes first: handling one has no checkpoint (`pmemd.ioreq.server`),
so cancellation lands between requests. Teardown must end within `SHUTDOWN_DEADLINE`
(systemd's TimeoutStopSec=10 for varstored): once a signal arrives an interval timer is
armed whose SIGALRM, left at its default action, ends the process if teardown hangs.

Readiness for systemd: `SystemdNotifier` connects to `$NOTIFY_SOCKET` early (the path may
be outside a later chroot) and sends `READY=1` once the daemon runs, `STOPPING=1` when
it starts to shut down.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

log = structlog.get_logger("pmemd.lifecycle")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_DEADLINE = 10.0  # seconds from the signal to the process's end


class SystemdNotifier:
    """sd_notify(3) over `$NOTIFY_SOCKET`; every method is a no-op when it is unset."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.sock: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(address)
        except OSError as e:
            log.warning("NOTIFY_SOCKET unreachable; readiness not reported", address=address, error=e.strerror)
            self.sock.close()
            self.sock = None

    def send(self, state: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(state.encode())
        except OSError as e:
            log.warning("sd_notify failed", state=state, error=e.strerror)

    def ready(self) -> None:
        self.send(f"READY=1\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def arm_shutdown_deadline(seconds: float = SHUTDOWN_DEADLINE) -> None:
    """End the process with SIGALRM if it is still tearing down `seconds` from now."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, seconds)


async def _cancel_on_signal(scope: trio.CancelScope, on_signal: Callable[[], None] | None = None, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Wait for the first shutdown signal; then ignore more of them and cancel `scope`."""
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info("shutting down", signal=signal.Signals(signum).name)
            break
    if on_signal is not None:
        on_signal()
    for signum in SHUTDOWN_SIGNALS:  # a second SIGTERM must not cut teardown short
        signal.signal(signum, signal.SIG_IGN)
    arm_shutdown_deadline()
    scope.cancel()


def run_until_signalled(main: Callable[[], Awaitable[None]], *, on_signal: Callable[[], None] | None = None) -> int:
    """Run `main` under trio; SIGTERM/SIGINT cancel it cleanly (after calling `on_signal`).

    Returns 0 when `main` returns or a signal ends it; its errors propagate. SIGPIPE is ignored.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    async def supervise() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(_cancel_on_signal, nursery.cancel_scope, on_signal)
            await main()
            nursery.cancel_scope.cancel()

    trio.run(supervise)
    return 0
