"""The envelope around every saved piece of DSM state (poison, health): self-describing and versioned.

    offset  field
    0       magic    b"PMDS"       — "this is pmemd DSM state"
    4       kind     4 ASCII bytes — what the body holds (b"POIS", b"HLTH", ...)
    8       version  u16           — the body layout's version
    10      reserved u16 (0)
    12      body     u32 length, then that many bytes
    16+n    crc32    u32 over everything before it

A reader refuses a wrong magic or kind, a bad checksum, trailing bytes and any version newer
than it knows (`StateFormatError`): a downgraded daemon must not half-read a newer save file.
The lifecycle owner embeds these blobs in its save files; `persist.py` writes them alone.
"""

from __future__ import annotations

import zlib
from typing import Any

from construct import (
    Bytes,
    Checksum,
    Const,
    Construct,
    ConstructError,
    GreedyBytes,
    Int16ul,
    Int32ul,
    Prefixed,
    RawCopy,
    Struct,
    Terminated,
    this,
)

MAGIC = b"PMDS"

Envelope = Struct(
    "header" / RawCopy(
        Struct(
            "magic" / Const(MAGIC),
            "kind" / Bytes(4),
            "version" / Int16ul,
            "reserved" / Const(0, Int16ul),
            "body" / Prefixed(Int32ul, GreedyBytes),
        )
    ),
    "crc32" / Checksum(Int32ul, lambda data: zlib.crc32(data), this.header.data),
    Terminated,
)


class StateFormatError(ValueError):
    """A saved state blob is corrupt, of another kind, or newer than this daemon understands."""


def wrap(kind: bytes, version: int, body: bytes) -> bytes:
    """Frame `body` (already built with the layout of `version`) as a `kind` blob."""
    return Envelope.build({"header": {"value": {"kind": kind, "version": version, "body": body}}})


def unwrap(kind: bytes, supported: int, blob: bytes) -> tuple[int, bytes]:
    """(version, body) of a `kind` blob whose version is at most `supported`.

    Errors: `StateFormatError` naming what is wrong.
    """
    try:
        header = Envelope.parse(blob).header.value
    except ConstructError as e:
        raise StateFormatError(f"not a valid pmemd state blob: {e}") from None
    if header.kind != kind:
        raise StateFormatError(f"blob holds {header.kind!r}, expected {kind!r}")
    if not 1 <= header.version <= supported:
        raise StateFormatError(
            f"{kind.decode()} blob version {header.version} is not supported (this daemon reads 1..{supported})"
        )
    return header.version, header.body


def parse_body(layout: Construct, body: bytes) -> Any:
    """Parse a body with `layout` (ending in `Terminated`), corrupt bodies as `StateFormatError`."""
    try:
        return layout.parse(body)
    except ConstructError as e:
        raise StateFormatError(f"corrupt state body: {e}") from None
