"""structlog set-up: JSON lines for the daemon (one object per event), console on a TTY.

Refused guest input goes through `refused(kind, ...)`: the first refusal of each kind is
logged at once, later ones at most `burst` at a time refilled at `rate` per second per
kind, each logged line carrying how many of that kind were suppressed since the last —
so a hostile guest hammering one bad call costs the host a few lines a second, not one
per trap, and an operator still sees every kind and the true counts.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]


def configure(fmt: LogFormat | None = None, *, domid: int | None = None, stream: TextIO | None = None) -> None:
    """Route structlog (and stdlib logging) to `stream` (stderr) in the chosen format."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if domid is not None:
        structlog.contextvars.bind_contextvars(domid=domid)
    guest_refusals.reset()


MAX_KINDS = 64  # kinds are names in our code, but the table stays bounded whatever calls it
OTHER_KIND = "other"


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class RefusalLog:
    """Rate-limited "refused guest input" log lines, one token bucket per kind."""

    def __init__(self, *, burst: int = 5, rate: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 logger: Any = None) -> None:
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.log = logger if logger is not None else structlog.get_logger("pmemd.guest")
        self.counts: collections.Counter[str] = collections.Counter()
        self._buckets: dict[str, _Bucket] = {}

    def reset(self) -> None:
        self.counts.clear()
        self._buckets.clear()

    def refused(self, kind: str, **fields: Any) -> bool:
        """Count one refusal of `kind`; log it unless its kind is over the rate. True if logged."""
        if kind not in self._buckets and len(self._buckets) >= MAX_KINDS:
            kind = OTHER_KIND
        self.counts[kind] += 1
        now = self.clock()
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return False
        bucket.tokens -= 1.0
        suppressed, bucket.suppressed = bucket.suppressed, 0
        self.log.warning("refused guest input", kind=kind, suppressed=suppressed, total=self.counts[kind], **fields)
        return True


guest_refusals = RefusalLog()


def refused(kind: str, **fields: Any) -> bool:
    """Log one refused guest input through the process's `RefusalLog` (see module docstring)."""
    return guest_refusals.refused(kind, **fields)
