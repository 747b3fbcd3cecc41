"""DSM dispatcher: guest-written DSM pages → reply bytes.

Input: up to four DSM pages (4096-byte chunks, the last zero-padded), dispatched in order on a
fresh guest (three DIMMs: Intel with labels, msft without, Intel with labels).
Contract: `Dispatcher.dispatch` never raises (ALLOWED is empty) and never takes its
handler-failure path (logging "dsm handler failed" or "dsm function mask failed" raises a
finding under `contract.tripwires`); every reply is a length word in [4, 4096] followed by exactly that many bytes less 4.
"""

from __future__ import annotations

from acpi.dsm_buffer import PAGE_SIZE
from fuzz.contract import Finding
from fuzz.guest import fresh

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_PAGES = 4


def pages(data: bytes) -> list[bytes]:
    chunks = [data[i : i + PAGE_SIZE] for i in range(0, min(len(data), MAX_PAGES * PAGE_SIZE), PAGE_SIZE)] or [b""]
    return [chunk.ljust(PAGE_SIZE, b"\0") for chunk in chunks]


def check_reply(reply: bytes) -> None:
    if len(reply) < 4:
        raise Finding(f"reply of {len(reply)} bytes has no length word")
    length = int.from_bytes(reply[:4], "little")
    if not 4 <= length <= PAGE_SIZE or len(reply) != length:
        raise Finding(f"reply length word {length} but {len(reply)} bytes")


def run(data: bytes) -> None:
    dispatcher = fresh().handlers.dispatcher
    for page in pages(data):
        check_reply(dispatcher.dispatch(page))
