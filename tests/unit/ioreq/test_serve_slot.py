"""One slot through the ioreq server (`IoreqServer._serve_slot`): what a malformed request may touch."""

from __future__ import annotations

from pmemd.ioreq import abi
from pmemd.ioreq.machine import single_accesses
from pmemd.ioreq.mapcache import MapCache
from pmemd.ioreq.server import IoreqServer


class Quiet:
    def port_read(self, port: int, size: int) -> int:
        return 0

    def port_write(self, port: int, size: int, value: int) -> None: ...

    def mmio_read(self, addr: int, size: int) -> int:
        return 0

    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


class Mappings:
    """A hypervisor that records the guest memory it is asked to map."""

    domid = 1

    def __init__(self) -> None:
        self.mapped: list[tuple[int, int]] = []

    async def map_foreign(self, gfn: int, nr_pages: int) -> memoryview:
        self.mapped.append((gfn, nr_pages))
        return memoryview(bytearray(nr_pages * abi.PAGE_SIZE))


async def test_a_malformed_pointer_request_maps_no_guest_memory() -> None:
    hv = Mappings()
    server = IoreqServer(hv, Quiet(), [])  # type: ignore[arg-type]
    page = memoryview(bytearray(abi.PAGE_SIZE))
    bits = abi.make_bits(abi.STATE_IOREQ_READY, dir=abi.IOREQ_WRITE, data_is_ptr=True)
    # 2^32-1 items of 8 bytes from GPA 0: 32 GiB of "buffer", far beyond the page Xen clips to
    page[: abi.IOREQ_SIZE] = abi.SLOT_STRUCT.pack(0xF000_0000, 0, 0xFFFF_FFFF, 8, 7, 0, bits, abi.IOREQ_TYPE_COPY)
    memory = MapCache(hv, [(0, 1 << 30)])  # type: ignore[arg-type]
    assert await server._serve_slot(page, 0, 0, single_accesses(Quiet()), memory)
    assert hv.mapped == [] and server.statistics().malformed == 1
    assert page[abi.BITS_OFFSET] & abi.STATE_MASK == abi.STATE_IORESP_READY


async def test_an_invalidate_with_the_pointer_bit_maps_no_guest_memory() -> None:
    # found by the ioreq fuzz target: the mapcache walked a buffer of 2^32 items of ~4 GiB
    hv = Mappings()
    server = IoreqServer(hv, Quiet(), [])  # type: ignore[arg-type]
    page = memoryview(bytearray(abi.PAGE_SIZE))
    bits = abi.make_bits(abi.STATE_IOREQ_READY, dir=abi.IOREQ_WRITE, data_is_ptr=True)
    page[: abi.IOREQ_SIZE] = abi.SLOT_STRUCT.pack(0, 0x1000, 0xFEFF_FF00, 0xFBF7_FFFF, 7, 0, bits,
                                                  abi.IOREQ_TYPE_INVALIDATE)
    memory = MapCache(hv, [(0, 1 << 30)])  # type: ignore[arg-type]
    assert await server._serve_slot(page, 0, 0, single_accesses(Quiet()), memory)
    assert hv.mapped == [] and server.statistics().by_kind["invalidate"] == 1
