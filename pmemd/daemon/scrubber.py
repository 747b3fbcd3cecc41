"""The trio side of ARS: a task that wakes when a scrub completes and reports it.

The handlers never wait — a scrub's progress is computed from `MediaErrors.now` — so
completion would go unnoticed until the guest next asks. `run_scrubber` watches instead: it
sleeps until the running scrub's deadline, settles it, and sends a `ScrubCompleted` (for QMP
events). It needs `MediaErrors.now` to be trio's clock (`trio.current_time`), so that its
sleeps and the handlers' arithmetic agree; with another clock it still converges, re-checking
after each sleep.

The DSM core (`pmemd.dsm`) stays free of trio; this is its one task.
"""

from __future__ import annotations

import trio
import trio.lowlevel

from pmemd.dsm.media import MediaErrors
from pmemd.dsm.scrub import ScrubCompleted


async def run_scrubber(
    media: MediaErrors,
    events: trio.MemorySendChannel[ScrubCompleted],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Report every scrub's completion on `events` until cancelled.

    A scrub started and replaced before this task ran (only possible for immediate,
    return-previous-data scrubs served back to back) is reported once, as the later one.
    Resources: registers a listener on `media.scrub_listeners` and removes it on exit;
    `events` is not closed (the caller owns it).
    """
    wake = trio.Event()

    def scrub_started() -> None:
        wake.set()

    media.scrub_listeners.append(scrub_started)
    task_status.started()
    reported = 0
    try:
        while True:
            scrub = media.ars.current
            if scrub is None or scrub.seq == reported:
                wake = trio.Event()
                await wake.wait()
                continue
            remaining = scrub.deadline - media.now()
            if remaining > 0:
                await trio.sleep(remaining)
                continue
            result = media.ars.settle(media.poison, media.now())
            if result is None:  # clock skew: not quite done yet
                await trio.lowlevel.checkpoint()
                continue
            reported = scrub.seq
            await events.send(
                ScrubCompleted(
                    scrub.seq,
                    result.address,
                    result.length,
                    len(result.records),
                    result.overflowed,
                    scrub.previous_data,
                    scrub.started_at,
                    scrub.deadline,
                )
            )
    finally:
        media.scrub_listeners.remove(scrub_started)
