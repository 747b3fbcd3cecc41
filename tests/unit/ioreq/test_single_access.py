"""The single-access table agrees with the general path (`malformed` + `execute`) on every slot."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pmemd.ioreq import abi
from pmemd.ioreq.machine import (
    SINGLE_BITS,
    IoRequest,
    execute,
    malformed,
    needs_completion,
    single_accesses,
    unhandled_result,
)


class Echo:
    """Reads answer a value wider than any size (so masking shows); writes are recorded."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int, int, int]] = []

    def port_read(self, port: int, size: int) -> int:
        return 0xFEDC_BA98_7654_3210_0000 | port

    def port_write(self, port: int, size: int, value: int) -> None:
        self.writes.append(("port", port, size, value))

    def mmio_read(self, addr: int, size: int) -> int:
        return 0xFFFF_0123_4567_89AB_CDEF ^ addr

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.writes.append(("mmio", addr, size, value))


class NoMemory:
    def read(self, gpa: int, n: int) -> bytes:
        raise AssertionError("a single access never touches guest memory")

    def write(self, gpa: int, data: bytes) -> None:
        raise AssertionError("a single access never touches guest memory")


slots = st.tuples(
    st.integers(0, 2**64 - 1),  # addr
    st.integers(0, 2**64 - 1),  # data
    st.sampled_from([0, 1, 2, 4096]),  # count
    st.sampled_from([0, 1, 2, 3, 4, 8, 16]),  # size
    st.integers(0, 2**32 - 1),  # vp_eport
    st.just(0),
    st.integers(0, 255).map(lambda b: abi.with_state(b, abi.STATE_IOREQ_READY)),  # bits
    st.sampled_from([abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY, abi.IOREQ_TYPE_PCI_CONFIG,
                     abi.IOREQ_TYPE_INVALIDATE, abi.IOREQ_TYPE_TIMEOFFSET, 200]),  # type
)


@settings(max_examples=500)
@given(slots)
def test_a_slot_in_the_table_is_well_formed_and_runs_as_execute_runs_it(slot: tuple[int, ...]) -> None:
    addr, data, count, size, _eport, _pad, bits, type_ = slot
    single = single_accesses(Echo()).get((type_, size, bits & SINGLE_BITS)) if count == 1 else None
    req = IoRequest.from_slot(slot)
    if single is None:
        assert count != 1 or req.data_is_ptr or malformed(req) is not None or type_ not in (
            abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY)
        return
    assert malformed(req) is None and not req.data_is_ptr
    fast, general = Echo(), Echo()
    assert single_accesses(fast)[type_, size, bits & SINGLE_BITS].run(addr, data) == execute(req, general, NoMemory())
    assert fast.writes == general.writes
    assert (single.kind, single.completes, single.unhandled(data)) == (
        req.kind, needs_completion(req), unhandled_result(req))


def test_every_plain_pio_and_mmio_access_has_an_entry() -> None:
    table = single_accesses(Echo())
    expected = {(abi.IOREQ_TYPE_PIO, size, bits) for size in (1, 2, 4) for bits in (0, abi.DIR_BIT)}
    expected |= {(abi.IOREQ_TYPE_COPY, size, bits) for size in (1, 2, 4, 8) for bits in (0, abi.DIR_BIT)}
    assert set(table) == expected


def test_a_failing_read_completes_all_ones_and_a_failing_write_keeps_the_data() -> None:
    table = single_accesses(Echo())
    assert table[abi.IOREQ_TYPE_COPY, 2, abi.DIR_BIT].unhandled(0x1234) == 0xFFFF
    assert table[abi.IOREQ_TYPE_PIO, 4, 0].unhandled(0x1234) == 0x1234
