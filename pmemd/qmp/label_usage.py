"""How full a DIMM's label area is, read from the guest's namespace index block (for operators).

The guest (Linux, UEFI 2.7 §13.19 / Linux `nd_namespace_index`) formats the label area as
two index blocks then label slots; each index block holds a free-slot bitmap (bit set = free).
We read the blocks, validate them as Linux does — signature, sequence number, self/other/label
offsets, Fletcher-64 checksum — take the current one (the newer of two valid blocks by the
cyclic 1→2→3→1 sequence), and count the slots in use. The label bytes are the guest's and
untrusted: every count is bounded by the area's size before use, and a bad area just reads
as "no valid index".

    index block (72 bytes, then the free bitmap), little-endian
    0 sig[16] "NAMESPACE_INDEX\\0"  16 flags[3]  19 labelsize (log2(size) - 7)  20 seq u32
    24 myoff u64  32 mysize u64  40 otheroff u64  48 labeloff u64  56 nslot u32
    60 major u16  62 minor u16  64 checksum u64  72 free[ceil(nslot / 8)]
Block size: 72 + the bitmap, rounded up to 256 bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from construct import Bytes, ConstructError, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from pmemd.dsm.label_store import LabelStore

INDEX_SIGNATURE = b"NAMESPACE_INDEX\x00"
INDEX_ALIGN = 256
CHECKSUM_OFFSET = 64

IndexHeader = Struct(
    "sig" / Bytes(16),
    "flags" / Bytes(3),
    "labelsize" / Int8ul,
    "seq" / Int32ul,
    "myoff" / Int64ul,
    "mysize" / Int64ul,
    "otheroff" / Int64ul,
    "labeloff" / Int64ul,
    "nslot" / Int32ul,
    "major" / Int16ul,
    "minor" / Int16ul,
    "checksum" / Int64ul,
)
HEADER_SIZE = IndexHeader.sizeof()  # 72


def fletcher64(data: bytes) -> int:
    """Linux `nd_fletcher64` over little-endian u32 words (the index checksum)."""
    lo, hi = 0, 0
    for (word,) in struct.iter_unpack("<I", data[: len(data) // 4 * 4]):
        lo = (lo + word) & 0xFFFFFFFF
        hi = (hi + lo) & 0xFFFFFFFFFFFFFFFF
    return ((hi << 32) | lo) & 0xFFFFFFFFFFFFFFFF


def index_block_size(nslot: int) -> int:
    return -(-(HEADER_SIZE + -(-nslot // 8)) // INDEX_ALIGN) * INDEX_ALIGN


def _next_seq(seq: int) -> int:
    return seq % 3 + 1  # 1 → 2 → 3 → 1


def _best(a: tuple[int, Any], b: tuple[int, Any]) -> tuple[int, Any]:
    """Linux `best_seq`: the block whose sequence number follows the other's."""
    return b if _next_seq(a[0]) == b[0] else a


def label_usage(store: LabelStore) -> dict[str, Any]:
    """{"valid": True, "version", "label-size", "seq", "slots", "in-use", "free"} or {"valid": False, "reason"}."""
    area = store.size
    if area < 2 * INDEX_ALIGN:
        return {"valid": False, "reason": "label area too small for two index blocks"}
    first = IndexHeader.parse(store.read(0, HEADER_SIZE))
    nslot = first.nslot
    if first.sig != INDEX_SIGNATURE:
        second_guess = _probe_second(store, area)
        if second_guess is None:
            return {"valid": False, "reason": "no namespace index (area not formatted)"}
        nslot = second_guess
    block = index_block_size(nslot)
    if nslot == 0 or 2 * block > area:
        return {"valid": False, "reason": f"index claims {nslot} slots, more than the area holds"}
    valid: list[tuple[int, Any]] = []
    reasons = []
    for i in (0, 1):
        raw = store.read(i * block, block)
        reason = _check(raw, i, block, nslot, area)
        if reason is None:
            valid.append((IndexHeader.parse(raw).seq & 3, raw))
        else:
            reasons.append(f"index {i}: {reason}")
    if not valid:
        return {"valid": False, "reason": "; ".join(reasons)}
    seq, raw = valid[0] if len(valid) == 1 else _best(valid[0], valid[1])
    header = IndexHeader.parse(raw)
    bitmap = int.from_bytes(raw[HEADER_SIZE : HEADER_SIZE + -(-nslot // 8)], "little") & ((1 << nslot) - 1)
    free = bitmap.bit_count()
    return {
        "valid": True,
        "version": f"{header.major}.{header.minor}",
        "label-size": 1 << (7 + header.labelsize),
        "seq": seq,
        "slots": nslot,
        "in-use": nslot - free,
        "free": free,
    }


def _probe_second(store: LabelStore, area: int) -> int | None:
    """With block 0 unreadable, find block 1 at the smallest plausible offset (256-byte steps)."""
    for offset in range(INDEX_ALIGN, min(area // 2, 1 << 16) + 1, INDEX_ALIGN):
        try:
            header = IndexHeader.parse(store.read(offset, HEADER_SIZE))
        except (ConstructError, ValueError):
            return None
        if header.sig == INDEX_SIGNATURE and header.myoff == offset and index_block_size(header.nslot) == offset:
            return header.nslot
    return None


def _check(raw: bytes, i: int, block: int, nslot: int, area: int) -> str | None:
    h = IndexHeader.parse(raw)
    if h.sig != INDEX_SIGNATURE:
        return "bad signature"
    if h.labelsize > 1:
        return f"label size code {h.labelsize} unknown"
    if h.seq & 3 == 0:
        return "sequence number 0"
    if h.nslot != nslot:
        return "slot count differs from the other index"
    if (h.myoff, h.otheroff, h.labeloff) != (i * block, (1 - i) * block, 2 * block):
        return "offsets inconsistent"
    if not HEADER_SIZE <= h.mysize <= block:
        return "size inconsistent"
    if 2 * block + nslot * (1 << (7 + h.labelsize)) > area:
        return "labels overrun the area"
    zeroed = raw[:CHECKSUM_OFFSET] + bytes(8) + raw[CHECKSUM_OFFSET + 8 :]
    if fletcher64(zeroed) != h.checksum:
        return "checksum mismatch"
    return None
