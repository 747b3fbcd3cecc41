"""The simulated Xen's side of the ioreq slot: the `ioreq_t` bytes it writes (reference §1.2) and
what `ioreq_send` and `wait_for_io` do with the slot's state (reference §1.5)."""

from __future__ import annotations

import pytest

from pmemd.sim import ioreq
from pmemd.sim.ioreq import Request, Wait

PORT = 7


def read_request() -> Request:
    return Request(ioreq.IOREQ_TYPE_COPY, 0x1122334455667788, 0xAABB, 3, 4, ioreq.IOREQ_READ, True, True)


def test_a_slot_is_32_bytes_and_the_page_holds_128() -> None:
    assert (ioreq.ioreq_t.sizeof(), ioreq.shared_iopage_t.sizeof(), ioreq.HVM_MAX_VCPUS) == (32, 4096, 128)


def test_the_struct_twin_packs_the_bytes_the_declared_layout_builds() -> None:
    fields = dict(addr=1, data=2, count=3, size=4, vp_eport=5, _pad0=6, bits=7, type=8)
    assert ioreq.SLOT.pack(*fields.values()) == ioreq.ioreq_t.build(fields)


def test_a_sent_request_has_the_field_offsets_and_bitfield_of_the_header() -> None:
    page = bytearray(4096)
    ioreq.reset_slot(page, 1, PORT)
    ioreq.send(page, 1, PORT, read_request())
    slot = page[32:64]
    assert slot[0:8] == (0x1122334455667788).to_bytes(8, "little")
    assert slot[8:16] == (0xAABB).to_bytes(8, "little")
    assert (slot[16:20], slot[20:24], slot[24:28]) == (b"\x03\0\0\0", b"\x04\0\0\0", b"\x07\0\0\0")
    # state READY (1) in bits 0-3, data_is_ptr bit 4, dir=read bit 5, df bit 6; then the type byte.
    assert (slot[30], slot[31]) == (0x01 | 0x10 | 0x20 | 0x40, ioreq.IOREQ_TYPE_COPY)


def test_sending_on_a_slot_the_device_model_left_busy_is_refused() -> None:
    page = bytearray(4096)
    ioreq.reset_slot(page, 0, PORT)
    page[ioreq.BITS_OFFSET] = ioreq.STATE_IOREQ_INPROCESS
    assert ioreq.refuse_send(page, 0, PORT) == "device model set bad IO state 2"


def test_sending_on_a_slot_whose_event_channel_was_changed_is_refused() -> None:
    page = bytearray(4096)
    ioreq.reset_slot(page, 0, 999)
    assert ioreq.refuse_send(page, 0, PORT) == "device model set bad event channel 999"


def test_a_clean_slot_may_be_sent_on() -> None:
    page = bytearray(4096)
    ioreq.reset_slot(page, 0, PORT)
    assert ioreq.refuse_send(page, 0, PORT) is None


@pytest.mark.parametrize(("seen", "state", "step"), [
    (ioreq.STATE_IOREQ_READY, ioreq.STATE_IOREQ_READY, Wait.WAIT),
    (ioreq.STATE_IOREQ_READY, ioreq.STATE_IOREQ_INPROCESS, Wait.WAIT),
    (ioreq.STATE_IOREQ_INPROCESS, ioreq.STATE_IOREQ_INPROCESS, Wait.WAIT),
    (ioreq.STATE_IOREQ_READY, ioreq.STATE_IORESP_READY, Wait.COMPLETE),
    (ioreq.STATE_IOREQ_INPROCESS, ioreq.STATE_IORESP_READY, Wait.COMPLETE),
    (ioreq.STATE_IOREQ_INPROCESS, ioreq.STATE_IOREQ_READY, Wait.CRASH),
    (ioreq.STATE_IOREQ_READY, ioreq.STATE_IOREQ_NONE, Wait.CRASH),
    (ioreq.STATE_IOREQ_READY, 4, Wait.CRASH),
    (ioreq.STATE_IOREQ_READY, 15, Wait.CRASH),
])
def test_wait_for_io_waits_completes_or_crashes_on_each_state(seen: int, state: int, step: Wait) -> None:
    assert ioreq.wait_for_io(seen, state)[0] is step


def test_a_crash_names_the_transition() -> None:
    assert ioreq.wait_for_io(ioreq.STATE_IOREQ_INPROCESS, ioreq.STATE_IOREQ_READY)[1] == (
        "Weird HVM ioreq state transition 2 -> 1")


def test_taking_the_response_returns_data_and_frees_the_slot_keeping_its_flags() -> None:
    page = bytearray(4096)
    ioreq.reset_slot(page, 0, PORT)
    ioreq.send(page, 0, PORT, read_request())
    page[ioreq.BITS_OFFSET] = (page[ioreq.BITS_OFFSET] & 0xF0) | ioreq.STATE_IORESP_READY
    page[ioreq.DATA_OFFSET:ioreq.DATA_OFFSET + 8] = (42).to_bytes(8, "little")
    assert ioreq.take_response(page, 0) == 42
    assert page[ioreq.BITS_OFFSET] == 0x70


@pytest.mark.parametrize(("type_", "dir_", "ptr", "expected"), [
    (ioreq.IOREQ_TYPE_COPY, ioreq.IOREQ_READ, False, True),
    (ioreq.IOREQ_TYPE_COPY, ioreq.IOREQ_WRITE, False, True),
    (ioreq.IOREQ_TYPE_PIO, ioreq.IOREQ_READ, False, True),
    (ioreq.IOREQ_TYPE_PIO, ioreq.IOREQ_WRITE, False, False),
    (ioreq.IOREQ_TYPE_COPY, ioreq.IOREQ_READ, True, False),
])
def test_data_goes_back_unless_a_pointer_or_a_port_write(type_: int, dir_: int, ptr: bool, expected: bool) -> None:
    assert ioreq.needs_completion(Request(type_, 0, 0, 1, 4, dir_, False, ptr)) is expected
