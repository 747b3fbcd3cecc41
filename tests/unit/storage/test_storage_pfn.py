"""The pfn/dax info block: parsed with construct, refused when anything is off."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from pmemd.storage import PfnInfoError, build_pfn_info, parse_pfn_info, read_pfn_info
from pmemd.storage.pfn import CHECKSUM_OFFSET, fletcher64, info_block_checksum, nd_pfn_sb

MiB = 1 << 20


def patched(block: bytes, offset: int, fmt: str, value: int, *, reseal: bool = True) -> bytes:
    out = bytearray(block)
    struct.pack_into(fmt, out, offset, value)
    if reseal:
        struct.pack_into("<Q", out, CHECKSUM_OFFSET, info_block_checksum(out))
    return bytes(out)


def test_the_block_is_4_kib_with_the_checksum_last() -> None:
    block = build_pfn_info(dataoff=2 * MiB, npfns=1)
    assert len(block) == 4096
    assert struct.unpack_from("<Q", block, CHECKSUM_OFFSET)[0] == nd_pfn_sb.parse(block).checksum


def test_fletcher64_sums_words_and_running_sums() -> None:
    assert fletcher64(struct.pack("<3I", 1, 2, 3)) == (10 << 32) | 6


def test_fletcher64_halves_wrap_at_32_bits() -> None:
    # lo: 0xffffffff, then 0xffffffff + 2 -> 1; hi: 0xffffffff + 1 -> 0x1_0000_0000 -> 0
    assert fletcher64(struct.pack("<2I", 0xFFFFFFFF, 2)) == 1


def test_a_built_block_parses_back() -> None:
    ns = uuid.uuid4()
    info = parse_pfn_info(build_pfn_info(dataoff=2 * MiB, npfns=1000, uuid_=ns, devdax=True))
    assert (info.devdax, info.uuid, info.dataoff, info.npfns, info.mode, info.version) == (
        True, ns, 2 * MiB, 1000, 2, (1, 4)
    )


def test_a_corrupt_block_is_refused_for_its_checksum() -> None:
    block = patched(build_pfn_info(dataoff=2 * MiB, npfns=10), 56, "<Q", 4 * MiB, reseal=False)
    with pytest.raises(PfnInfoError, match=r"^info block: checksum mismatch \(stored 0x[0-9a-f]{16}, computed"):
        parse_pfn_info(block)


def test_an_unknown_signature_is_refused() -> None:
    block = b"NVDIMM_BTT_INFO\0" + build_pfn_info(dataoff=2 * MiB, npfns=10)[16:]
    with pytest.raises(PfnInfoError, match="signature b'NVDIMM_BTT_INFO.*is neither"):
        parse_pfn_info(block)


def test_a_short_block_is_refused() -> None:
    with pytest.raises(PfnInfoError, match="expected 4096 bytes, got 100"):
        parse_pfn_info(bytes(100))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "words"),
    [
        (52, "<H", 2, "unsupported version 2.4"),
        (56, "<Q", 0x1000, "bad data offset 0x1000"),
        (56, "<Q", 0x200100, "bad data offset 0x200100"),
        (72, "<I", 3, "mode 3 is neither"),
        (84, "<I", 0x3000, "alignment 0x3000 is not a power of two"),
        (88, "<I", 65536, "page size 65536"),
    ],
)
def test_a_checksummed_block_with_a_bad_field_is_refused(offset: int, fmt: str, value: int, words: str) -> None:
    block = patched(build_pfn_info(dataoff=2 * MiB, npfns=10), offset, fmt, value)
    with pytest.raises(PfnInfoError, match=words):
        parse_pfn_info(block)


def test_read_from_a_device_image_names_the_device(tmp_path: Path) -> None:
    image = tmp_path / "pmem0"
    image.write_bytes(bytes(4096) + patched(build_pfn_info(dataoff=2 * MiB, npfns=1), 4000, "<I", 1, reseal=False))
    with pytest.raises(PfnInfoError, match=rf"^{image} info block at 0x1000: checksum mismatch"):
        read_pfn_info(image)


def test_the_info_block_is_read_at_4_kib(tmp_path: Path) -> None:
    image = tmp_path / "pmem0"
    image.write_bytes(bytes(4096) + build_pfn_info(dataoff=2 * MiB, npfns=7))
    assert read_pfn_info(image).npfns == 7
