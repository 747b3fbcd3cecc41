"""The ACPI hvmloader handles itself when it loads dm-acpi blobs: table headers, checksums, and
the SSDT it wraps a device body in (libacpi's `aml_build.c`: `aml_prepend_device`,
`aml_prepend_scope`, then a table header).

The simulator's own encoder, independent of the daemon's `acpi` package: a test that
disassembles what the simulated hvmloader built checks the daemon's AML and this wrapper
against each other through a third reader (iasl/acpiexec).
"""

from __future__ import annotations

import re
import struct

HEADER = struct.Struct("<4sIBB6s8sI4sI")  # signature length revision checksum oem_id oem_table_id
HEADER_SIZE = HEADER.size  # oem_revision creator_id creator_revision: 36 bytes
CHECKSUM_OFFSET = 9
SSDT_REVISION = 2
# libacpi's ACPI_OEM_ID, ACPI_OEM_TABLE_ID, and the creator hvmloader writes into its tables.
OEM_ID, OEM_TABLE_ID, OEM_REVISION = b"Xen", b"HVM", 0
CREATOR_ID, CREATOR_REVISION = b"HVML", 0

SCOPE_OP = b"\x10"
DEVICE_OP = b"\x5b\x82"
ROOT_PREFIX = b"\\"
_NAME_SEG = re.compile(r"[A-Z_][A-Z0-9_]{3}")


def table_header(blob: bytes) -> tuple[str, int]:
    """(signature, length) of the table at the start of `blob` (at least HEADER_SIZE bytes)."""
    signature, length = HEADER.unpack_from(blob)[:2]
    return signature.decode("ascii", "replace"), length


def checksum(table: bytes) -> int:
    """The byte that makes `table` sum to zero (its checksum byte counted as zero)."""
    return -(sum(table) - table[CHECKSUM_OFFSET]) & 0xFF


def with_checksum(table: bytes) -> bytes:
    """`table` with its checksum recomputed, as hvmloader does for every table it copies."""
    fixed = bytearray(table)
    fixed[CHECKSUM_OFFSET] = checksum(table)
    return bytes(fixed)


def pkg_length(content: int) -> bytes:
    """A PkgLength for a package of `content` bytes after it: the fewest bytes that hold
    content plus their own count (one byte up to 63; then 12, 20, 28 bits)."""
    for size, limit in ((1, 1 << 6), (2, 1 << 12), (3, 1 << 20), (4, 1 << 28)):
        total = content + size
        if total < limit:
            break
    else:
        raise ValueError(f"package of {content} bytes is too long for a PkgLength")
    if size == 1:
        return bytes([total])
    return bytes([((size - 1) << 6) | (total & 0x0F)]) + (total >> 4).to_bytes(size - 1, "little")


def name_seg(name: str) -> bytes:
    """An AML NameSeg: four characters, a lead of A-Z or _, then A-Z, 0-9 or _."""
    if not _NAME_SEG.fullmatch(name):
        raise ValueError(f"{name!r} is not an AML NameSeg")
    return name.encode("ascii")


def device_ssdt(device: str, body: bytes) -> bytes:
    """`Scope(\\_SB) { Device(<device>) { <body> } }` as a complete SSDT."""
    inner = name_seg(device) + body
    device_block = DEVICE_OP + pkg_length(len(inner)) + inner
    scope = ROOT_PREFIX + name_seg("_SB_") + device_block
    aml = SCOPE_OP + pkg_length(len(scope)) + scope
    header = HEADER.pack(b"SSDT", HEADER_SIZE + len(aml), SSDT_REVISION, 0, OEM_ID, OEM_TABLE_ID,
                         OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    return with_checksum(header + aml)
