"""The firmware image a virtual DIMM accepts, and what "verified" means for it.

A pmemd firmware image is a 32-byte header and a payload (all little-endian):

    offset  size  field
    0       8     magic          b"PMEMDFW\\0"
    8       8     version        u64, not 0: what `ndctl list -DF` shows once it is staged/running
    16      4     payload_size   u32: bytes after the header
    20      4     payload_crc32  u32: zlib CRC-32 of the payload
    24      4     header_crc32   u32: zlib CRC-32 of bytes 0..23
    28      4     reserved       u32, 0
    32      n     payload        opaque (a virtual DIMM runs no code)

An image is verified when the bytes the guest sent (Intel fn 14) start at offset 0 with no
gap, total exactly 32 + payload_size, the magic, reserved word and both CRCs match and the
version is not 0. Anything else — a truncated upload, a flipped bit, a random file — is
refused with a reason (`ImageRejected`). `build_image` writes one (`pmemd firmware-image`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from construct import Bytes, ConstructError, Int32ul, Int64ul, Struct

MAGIC = b"PMEMDFW\0"
HEADER_SIZE = 32

Header = Struct(
    "magic" / Bytes(8),
    "version" / Int64ul,
    "payload_size" / Int32ul,
    "payload_crc32" / Int32ul,
    "header_crc32" / Int32ul,
    "reserved" / Int32ul,
)
assert Header.sizeof() == HEADER_SIZE


class ImageRejected(ValueError):
    """The uploaded bytes are not a valid image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    version: int
    payload_size: int


def build_image(version: int, payload: bytes) -> bytes:
    """A valid image of `version` (1..2^64-1) carrying `payload`."""
    if not 0 < version < 1 << 64:
        raise ValueError(f"firmware version {version:#x} must be between 1 and 2^64 - 1")
    head = MAGIC + Int64ul.build(version) + Int32ul.build(len(payload)) + Int32ul.build(zlib.crc32(payload))
    return head + Int32ul.build(zlib.crc32(head)) + Int32ul.build(0) + payload


def verify_image(data: bytes) -> ImageInfo:
    """The version and size of a valid image. Errors: `ImageRejected` naming the first fault."""
    if len(data) < HEADER_SIZE:
        raise ImageRejected(f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    try:
        h = Header.parse(data[:HEADER_SIZE])
    except ConstructError as e:  # pragma: no cover - fixed-size fields always parse
        raise ImageRejected(str(e)) from None
    if h.magic != MAGIC:
        raise ImageRejected(f"magic {h.magic!r} is not {MAGIC!r}")
    if zlib.crc32(data[:24]) != h.header_crc32:
        raise ImageRejected("header checksum mismatch")
    if h.reserved != 0:
        raise ImageRejected(f"reserved header word {h.reserved:#x} is not 0")
    if h.version == 0:
        raise ImageRejected("version 0 is not a firmware version")
    if len(data) != HEADER_SIZE + h.payload_size:
        raise ImageRejected(f"{len(data)} bytes received, the header announces {HEADER_SIZE + h.payload_size}")
    if zlib.crc32(data[HEADER_SIZE:]) != h.payload_crc32:
        raise ImageRejected("payload checksum mismatch")
    return ImageInfo(h.version, h.payload_size)
