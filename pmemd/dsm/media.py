"""A guest's media-error state: poison, the injected subset, the scrub engine, the clock.

One `MediaErrors` lives on the root device (`Root.media`). The poison set is what ARS reports;
`injected` remembers which ranges came from error injection, for inject status (fn 9) and
inject clear (fn 8), which must not clear poison the host reported. `now` is injected so that
handlers compute scrub progress without timers: `time.monotonic` in the daemon,
`trio.current_time` when the trio scrubber runner is used, a fake in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from construct import GreedyBytes, Int32ul, Prefixed, Struct, Terminated

from .poison import DEFAULT_MAX_RANGES, PoisonSet
from .root_layouts import MAX_ARS_RECORDS
from .scrub import DEFAULT_SCRUB_RATE, ArsState
from .state_blob import parse_body, unwrap, wrap

BLOB_KIND = b"MEDA"
BLOB_VERSION = 1

MediaBodyV1 = Struct(
    "poison" / Prefixed(Int32ul, GreedyBytes),  # a PoisonSet blob
    "injected" / Prefixed(Int32ul, GreedyBytes),  # a PoisonSet blob
    Terminated,
)
"""Version 1 body: the poison and injected sets, each a self-describing POIS blob."""


@dataclass
class MediaErrors:
    """Per-guest poison and ARS state, reached by the root `_DSM` handlers through `Root.media`."""

    poison: PoisonSet = field(default_factory=PoisonSet)
    injected: PoisonSet = field(default_factory=PoisonSet)
    ars: ArsState = field(default_factory=ArsState)
    now: Callable[[], float] = time.monotonic
    scrub_listeners: list[Callable[[], None]] = field(default_factory=list)
    """Called (synchronously) after each ARS start; the trio scrubber runner registers here."""

    @classmethod
    def create(
        cls,
        *,
        rate: float = DEFAULT_SCRUB_RATE,
        now: Callable[[], float] = time.monotonic,
        max_ranges: int = DEFAULT_MAX_RANGES,
        max_records: int = MAX_ARS_RECORDS,
    ) -> MediaErrors:
        """Fresh state; `max_records` (records per ARS status reply) is lowered only by tests."""
        return cls(PoisonSet(max_ranges), PoisonSet(max_ranges), ArsState(rate, max_records), now)

    def scrub_started(self) -> None:
        for listener in list(self.scrub_listeners):
            listener()

    def to_bytes(self) -> bytes:
        """The persistent part (poison and injected ranges) as a versioned MEDA blob.

        Scrub progress is not saved: a scrub in flight at shutdown is simply not resumed,
        as after a platform reboot (Linux starts a new one).
        """
        body = MediaBodyV1.build({"poison": self.poison.to_bytes(), "injected": self.injected.to_bytes()})
        return wrap(BLOB_KIND, BLOB_VERSION, body)

    def restore(self, blob: bytes) -> None:
        """Replace poison and injected ranges with a `to_bytes` blob's; nothing changes on error.

        Errors: `StateFormatError` for a corrupt or newer blob.
        """
        _, body = unwrap(BLOB_KIND, BLOB_VERSION, blob)
        parsed = parse_body(MediaBodyV1, body)
        poison = PoisonSet.from_bytes(parsed.poison, self.poison.max_ranges)
        injected = PoisonSet.from_bytes(parsed.injected, self.injected.max_ranges)
        self.poison, self.injected = poison, injected
