"""Accesses the simulated Xen completes itself (RAM, pmem, nobody's address): `rep` strides, direction
flag, 64-bit wraparound, string buffers, and the null handler."""

from __future__ import annotations

from pmemd.sim.hv_emulate import NullHandler, all_ones, perform
from pmemd.sim.ioreq import IOREQ_READ, IOREQ_TYPE_COPY, IOREQ_TYPE_PIO, IOREQ_WRITE, Request


class Registers:
    """Reads return the address; writes are recorded."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int, int, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        return addr

    def port_read(self, port: int, size: int) -> int:
        return port

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.writes.append(("mmio", addr, size, value))

    def port_write(self, port: int, size: int, value: int) -> None:
        self.writes.append(("port", port, size, value))


class Ram:
    def __init__(self) -> None:
        self.bytes = bytearray(0x1000)

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.bytes[gpa:gpa + n])

    def write(self, gpa: int, data: bytes) -> None:
        self.bytes[gpa:gpa + len(data)] = data


def test_a_rep_read_returns_the_last_item_read_masked_to_its_size() -> None:
    req = Request(IOREQ_TYPE_COPY, 0x1_0000_0100, 0, 3, 2, IOREQ_READ, False, False)
    assert perform(req, Registers(), Ram()) == 0x0104


def test_a_backwards_rep_wraps_below_zero_at_64_bits() -> None:
    device = Registers()
    perform(Request(IOREQ_TYPE_COPY, 4, 9, 3, 4, IOREQ_WRITE, True, False), device, Ram())
    assert [w[1] for w in device.writes] == [4, 0, (1 << 64) - 4]


def test_a_port_stays_put_while_the_string_buffer_advances() -> None:
    device, ram = Registers(), Ram()
    ram.write(0x100, bytes(range(8)))
    perform(Request(IOREQ_TYPE_PIO, 0x0A18, 0x100, 2, 4, IOREQ_WRITE, False, True), device, ram)
    assert device.writes == [("port", 0x0A18, 4, 0x03020100), ("port", 0x0A18, 4, 0x07060504)]


def test_a_string_read_fills_guest_memory_and_leaves_data_as_the_pointer() -> None:
    ram = Ram()
    assert perform(Request(IOREQ_TYPE_COPY, 0x10, 0x200, 2, 1, IOREQ_READ, False, True), Registers(), ram) == 0x200
    assert ram.read(0x200, 2) == bytes([0x10, 0x11])


def test_a_write_without_a_buffer_writes_data_masked_to_each_item() -> None:
    device = Registers()
    perform(Request(IOREQ_TYPE_COPY, 0x40, 0x1_2345, 2, 2, IOREQ_WRITE, False, False), device, Ram())
    assert device.writes == [("mmio", 0x40, 2, 0x2345), ("mmio", 0x42, 2, 0x2345)]


def test_nobodys_address_reads_all_ones_and_drops_writes() -> None:
    assert perform(Request(IOREQ_TYPE_COPY, 0x40, 0, 1, 4, IOREQ_READ, False, False), NullHandler(), Ram()) == (
        0xFFFF_FFFF)
    assert all_ones(8) == (1 << 64) - 1 and all_ones(3) == (1 << 64) - 1
