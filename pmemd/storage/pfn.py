"""The pfn/dax info block (Linux `struct nd_pfn_sb`), parsed and checked before it is trusted.

It sits 4 KiB into an fsdax/devdax namespace and says where the data starts (`dataoff`)
and how much of the front is metadata (Linux's memmap; Xen's frame table in the vNVDIMM
design). A corrupt block must never move the data area, so every field that does is checked,
and the block is refused with a message naming the check and the device.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from construct import Bytes, ConstructError, Int16ul, Int32ul, Int64ul, Struct, Terminated

from pmemd.xen.page import PAGE_SIZE

from .errors import PfnInfoError

PFN_SIG = b"NVDIMM_PFN_INFO\0"
DAX_SIG = b"NVDIMM_DAX_INFO\0"
INFO_BLOCK_OFFSET = 4096  # Linux: the first 8 KiB of a namespace are reserved, info at 4 KiB
INFO_BLOCK_SIZE = 4096
CHECKSUM_OFFSET = 4088
PAGE_STRUCT_SIZE = 64  # sizeof(struct page) the block was laid out for (x86-64)
MODE_RAM = 1  # memmap in RAM
MODE_PMEM = 2  # memmap in pmem, between the info block and dataoff

nd_pfn_sb = Struct(
    "signature" / Bytes(16),
    "uuid" / Bytes(16),
    "parent_uuid" / Bytes(16),
    "flags" / Int32ul,
    "version_major" / Int16ul,
    "version_minor" / Int16ul,
    "dataoff" / Int64ul,  # from namespace start + start_pad to the first data byte
    "npfns" / Int64ul,
    "mode" / Int32ul,
    "start_pad" / Int32ul,  # minor >= 1
    "end_trunc" / Int32ul,  # minor >= 1
    "align" / Int32ul,  # minor >= 2
    "page_size" / Int32ul,  # minor >= 4
    "page_struct_size" / Int16ul,  # minor >= 4
    "padding" / Bytes(3994),
    "checksum" / Int64ul,  # fletcher64 of the 4 KiB with this field zeroed
    Terminated,
)


def fletcher64(data: bytes) -> int:
    """Linux `nd_fletcher64`: little-endian u32 words; lo = Σ words, hi = Σ running lo."""
    lo = hi = 0
    for (word,) in struct.iter_unpack("<I", data):
        lo = (lo + word) & 0xFFFFFFFF
        hi += lo
    return ((hi & 0xFFFFFFFF) << 32) | lo


def info_block_checksum(block: bytes) -> int:
    """The checksum a 4 KiB info block should carry (its own field counted as zero)."""
    return fletcher64(block[:CHECKSUM_OFFSET] + bytes(8))


@dataclass(frozen=True)
class PfnInfo:
    """A checked info block; `start_pad`/`end_trunc`/`align` are 0 when the version lacks them."""

    devdax: bool
    uuid: UUID
    parent_uuid: UUID
    version: tuple[int, int]
    dataoff: int
    npfns: int
    mode: int
    start_pad: int
    end_trunc: int
    align: int


def parse_pfn_info(block: bytes, *, where: str = "info block") -> PfnInfo:
    """Parse and check a 4 KiB info block; `where` names it in the refusal message."""

    def refuse(reason: str) -> PfnInfoError:
        return PfnInfoError(f"{where}: {reason}; refusing to trust its data offset")

    if len(block) != INFO_BLOCK_SIZE:
        raise refuse(f"expected {INFO_BLOCK_SIZE} bytes, got {len(block)}")
    try:
        raw = nd_pfn_sb.parse(block)
    except ConstructError as e:  # cannot happen for 4096 bytes, but the boundary is here
        raise refuse(f"unparsable ({e})") from None
    if raw.signature not in (PFN_SIG, DAX_SIG):
        raise refuse(f"signature {raw.signature!r} is neither {PFN_SIG!r} nor {DAX_SIG!r}")
    expected = info_block_checksum(block)
    if raw.checksum != expected:
        raise refuse(f"checksum mismatch (stored {raw.checksum:#018x}, computed {expected:#018x})")
    if raw.version_major != 1:
        raise refuse(f"unsupported version {raw.version_major}.{raw.version_minor} (need major 1)")
    minor = raw.version_minor
    start_pad = raw.start_pad if minor >= 1 else 0
    end_trunc = raw.end_trunc if minor >= 1 else 0
    align = raw.align if minor >= 2 else 0
    if raw.mode not in (MODE_RAM, MODE_PMEM):
        raise refuse(f"mode {raw.mode} is neither 1 (memmap in RAM) nor 2 (memmap in pmem)")
    if raw.dataoff < INFO_BLOCK_OFFSET + INFO_BLOCK_SIZE or raw.dataoff % PAGE_SIZE:
        raise refuse(f"bad data offset {raw.dataoff:#x} (must be 4 KiB aligned and past the info block)")
    if align and (align & (align - 1) or align < PAGE_SIZE):
        raise refuse(f"alignment {align:#x} is not a power of two of at least 4 KiB")
    if start_pad % PAGE_SIZE or end_trunc % PAGE_SIZE:
        raise refuse(f"start_pad {start_pad:#x} / end_trunc {end_trunc:#x} not 4 KiB aligned")
    if minor >= 4 and (raw.page_size != PAGE_SIZE or raw.page_struct_size != PAGE_STRUCT_SIZE):
        raise refuse(
            f"page size {raw.page_size} / struct page size {raw.page_struct_size} "
            f"(expected {PAGE_SIZE} / {PAGE_STRUCT_SIZE})"
        )
    return PfnInfo(
        devdax=raw.signature == DAX_SIG,
        uuid=uuid.UUID(bytes=raw.uuid),
        parent_uuid=uuid.UUID(bytes=raw.parent_uuid),
        version=(raw.version_major, minor),
        dataoff=raw.dataoff,
        npfns=raw.npfns,
        mode=raw.mode,
        start_pad=start_pad,
        end_trunc=end_trunc,
        align=align,
    )


def read_pfn_info(device: str | Path, offset: int = INFO_BLOCK_OFFSET) -> PfnInfo:
    """Read and check the info block of a namespace device (or an image of one)."""
    try:
        with open(device, "rb") as f:
            f.seek(offset)
            block = f.read(INFO_BLOCK_SIZE)
    except OSError as e:
        raise PfnInfoError(f"{device}: cannot read the info block: {e.strerror}") from None
    return parse_pfn_info(block, where=f"{device} info block at {offset:#x}")


def build_pfn_info(
    *,
    dataoff: int,
    npfns: int,
    devdax: bool = False,
    uuid_: uuid.UUID | None = None,
    parent_uuid: uuid.UUID | None = None,
    mode: int = MODE_PMEM,
    start_pad: int = 0,
    end_trunc: int = 0,
    align: int = 2 << 20,
) -> bytes:
    """A valid version 1.4 info block, checksummed: for simulated hosts and tests."""
    block = bytearray(
        nd_pfn_sb.build(
            dict(
                signature=DAX_SIG if devdax else PFN_SIG,
                uuid=(uuid_ or uuid.uuid4()).bytes,
                parent_uuid=(parent_uuid or uuid.UUID(int=0)).bytes,
                flags=0,
                version_major=1,
                version_minor=4,
                dataoff=dataoff,
                npfns=npfns,
                mode=mode,
                start_pad=start_pad,
                end_trunc=end_trunc,
                align=align,
                page_size=PAGE_SIZE,
                page_struct_size=PAGE_STRUCT_SIZE,
                padding=bytes(3994),
                checksum=0,
            )
        )
    )
    struct.pack_into("<Q", block, CHECKSUM_OFFSET, info_block_checksum(bytes(block)))
    return bytes(block)
