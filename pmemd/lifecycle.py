"""Process lifetime: run a trio main until it ends or SIGTERM/SIGINT arrives, then exit 0.

Signal handlers only wake a trio task (trio's signal receiver); that task cancels the
main nursery, so every service tears down in reverse order through its own `finally`.
"""

from __future__ import annotations

import signal
from typing import Awaitable, Callable

import structlog
import trio

log = structlog.get_logger("pmemd.lifecycle")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _cancel_on_signal(scope: trio.CancelScope, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info("shutting down", signal=signal.Signals(signum).name)
            scope.cancel()
            return


def run_until_signalled(main: Callable[[], Awaitable[None]]) -> int:
    """Run `main` under trio; SIGTERM/SIGINT cancel it cleanly. SIGPIPE is ignored."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    async def supervise() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(_cancel_on_signal, nursery.cancel_scope)
            await main()
            nursery.cancel_scope.cancel()

    trio.run(supervise)
    return 0
