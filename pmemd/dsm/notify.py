"""ACPI Notify requests the DSM handlers raise, queued on the device state for the transport.

Handlers are pure, so they cannot raise an SCI themselves: they append the notify value to
their device's `pending_notifies` queue, and the transport (the AML/GPE path) drains it after
the call. A pending value is queued once: a guest that injects a thousand errors with the
notify option gets one 0x81, which is all a rescan needs — and the queue stays bounded.
"""

from __future__ import annotations

from collections import deque

NOTIFY_HEALTH = 0x81
"""Root: "new uncorrectable errors, re-scan" (ARS). DIMM: "health changed, re-read SMART"."""

NotifyQueue = deque[int]


def queue_notify(queue: NotifyQueue, value: int) -> None:
    """Ask the transport to raise Notify(`value`) on the device owning `queue`, once."""
    if value not in queue:
        queue.append(value)


def drain_notifies(queue: NotifyQueue) -> list[int]:
    """Take every pending notify value, oldest first (for the transport)."""
    values = list(queue)
    queue.clear()
    return values
