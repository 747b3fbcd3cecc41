"""Tiny static x86-64 programs for the guest: N port reads in a tight loop (trap-cost benchmark).

The Xen lab's guest compares one trap round trip to pmemd (reads of the notify port, served
by pmemd's ioreq server) with one to QEMU-xen (PCI config reads at 0xcfc after latching an
address in 0xcf8, which Xen forwards as IOREQ_TYPE_PCI_CONFIG). busybox has no port I/O
applet and a loop of `dd if=/dev/port` would time process start-up, so each program is a few
instructions written here as machine code: ioperm, [latch 0xcf8], COUNT x `in eax, dx`, exit(0).
"""

from __future__ import annotations

import struct

BASE = 0x400000
HEADERS = 64 + 56
PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC
PCI_HOST_BRIDGE_ID = 0x80000000  # enable bit, bus 0 device 0 function 0, register 0


def _code(port: int, count: int, latch: int | None) -> bytes:
    first, number = (PCI_CONFIG_ADDRESS, 8) if latch is not None else (port, 4)
    code = b"\xbf" + struct.pack("<I", first) + b"\xbe" + struct.pack("<I", number)  # ioperm(first, number, 1)
    code += b"\xba\x01\x00\x00\x00" + b"\xb8\xad\x00\x00\x00" + b"\x0f\x05"
    if latch is not None:  # mov dx, 0xcf8; mov eax, latch; out dx, eax
        code += b"\x66\xba" + struct.pack("<H", PCI_CONFIG_ADDRESS) + b"\xb8" + struct.pack("<I", latch) + b"\xef"
    code += b"\xbb" + struct.pack("<I", count)  # mov ebx, count
    code += b"\xba" + struct.pack("<I", port)  # mov edx, port
    code += b"\xed" + b"\xff\xcb" + b"\x75\xfb"  # loop: in eax, dx; dec ebx; jnz loop
    code += b"\x31\xff" + b"\xb8\x3c\x00\x00\x00" + b"\x0f\x05"  # exit(0)
    return code


def port_read_loop(port: int, count: int, *, latch: int | None = None) -> bytes:
    """An ELF executable reading `port` `count` times (after writing `latch` to 0xcf8, if given)."""
    if not 0 < count < 1 << 32 or not 0 <= port <= 0xFFFF:
        raise ValueError("count must be 1..2^32-1 and port 0..0xffff")
    code = _code(port, count, latch)
    size = HEADERS + len(code)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    return header + program + code
