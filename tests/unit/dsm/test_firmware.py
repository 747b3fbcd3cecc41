"""Intel firmware update (fns 12-16) and activation (fns 29/30, bus fns 1/2) as a guest drives them.

Every call goes through `Dispatcher.dispatch`; each transition of `firmware.Firmware` and each
bad input is checked with its exact status word.
"""

from __future__ import annotations

import pytest
from construct import Int8ul, Int32ul
from hypothesis import given, settings
from hypothesis import strategies as st

from acpi.dsm_buffer import INTEL_BUS_HANDLE
from pmemd.config import from_mapping
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.call import Status
from pmemd.dsm.firmware import (
    BUS_STATUS_NO_ARM,
    BUS_STATUS_NO_FIRMWARE,
    INITIAL_VERSION,
    MAX_SEND_LEN,
    RESULT_NONE,
    RESULT_NOT_STAGED,
    RESULT_SUCCESS,
    STORAGE_SIZE,
    Firmware,
    firmware_file_bytes,
    parse_firmware_file,
)
from pmemd.dsm.firmware_functions import BusActivateInfo, DimmActivateInfo, FwInfo, QueryOutput
from pmemd.dsm.firmware_image import HEADER_SIZE, ImageRejected, build_image, verify_image
from pmemd.dsm.page import encode_request
from pmemd.dsm.state_blob import StateFormatError
from tests.harness.dsm import Guest, guest

DIMM, OTHER = 1, 2  # slots 0 and 1, both Intel
NEW = 0x0000_0002_0000_0007
IMAGE = build_image(NEW, bytes(range(256)) * 40)  # 10 KiB payload: three sends

CONTEXT_INVALID, START_BUSY, FINISH_DONE, BAD_IMAGE, ABORTED, SEQUENCE = (
    0x10007, 0x10007, 0x20007, 0x30007, 0x40007, 0x40007,
)


def info(g: Guest, handle: int = DIMM):
    status, out = g.call(12, handle=handle, revision=2)
    assert status == Status.SUCCESS
    return FwInfo.parse(out)


def start(g: Guest, handle: int = DIMM) -> tuple[int, int]:
    status, out = g.call(13, handle=handle, revision=2)
    assert len(out) == 4
    return status, Int32ul.parse(out)


def send(g: Guest, context: int, offset: int, data: bytes, *, length: int | None = None, handle: int = DIMM) -> int:
    header = Int32ul.build(context) + Int32ul.build(offset) + Int32ul.build(len(data) if length is None else length)
    return g.call(14, header + data, handle=handle, revision=2)[0]


def finish(g: Guest, context: int, flags: int = 0, *, reserved: bytes = bytes(3), handle: int = DIMM) -> int:
    return g.call(15, Int8ul.build(flags) + reserved + Int32ul.build(context), handle=handle, revision=2)[0]


def query(g: Guest, context: int, handle: int = DIMM) -> tuple[int, int]:
    status, out = g.call(16, Int32ul.build(context), handle=handle, revision=2)
    return status, QueryOutput.parse(out).updated_fw_rev


def upload(g: Guest, image: bytes, handle: int = DIMM) -> int:
    """start + sends in MAX_SEND_LEN chunks + finish; the context."""
    status, context = start(g, handle)
    assert status == 0
    for offset in range(0, len(image), MAX_SEND_LEN):
        assert send(g, context, offset, image[offset:offset + MAX_SEND_LEN], handle=handle) == 0
    assert finish(g, context, handle=handle) == 0
    return context


def stage(g: Guest, image: bytes = IMAGE, handle: int = DIMM) -> None:
    assert query(g, upload(g, image, handle), handle) == (0, verify_image(image).version)


def arm(g: Guest, value: int = 1, handle: int = DIMM) -> int:
    return g.call(30, Int8ul.build(value), handle=handle, revision=2)[0]


def dimm_activate_info(g: Guest, handle: int = DIMM):
    status, out = g.call(29, handle=handle, revision=2)
    assert status == 0
    return DimmActivateInfo.parse(out)


def bus_info(g: Guest):
    status, out = g.call(1, handle=INTEL_BUS_HANDLE)
    assert status == 0
    return BusActivateInfo.parse(out)


def activate(g: Guest, iodev_state: int = 1) -> int:
    return g.call(2, Int8ul.build(iodev_state), handle=INTEL_BUS_HANDLE)[0]


# The image format.


def test_a_built_image_verifies_with_its_version() -> None:
    assert verify_image(IMAGE).version == NEW


@pytest.mark.parametrize("corrupt, reason", [
    (lambda i: i[:HEADER_SIZE - 1], "shorter than"),
    (lambda i: b"X" + i[1:], "magic"),
    (lambda i: i[:9] + bytes([i[9] ^ 1]) + i[10:], "header checksum"),
    (lambda i: i[:-1], "announces"),
    (lambda i: i + b"\0", "announces"),
    (lambda i: i[:-1] + bytes([i[-1] ^ 0x80]), "payload checksum"),
])
def test_a_damaged_image_is_refused_with_the_reason(corrupt, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        verify_image(corrupt(IMAGE))


def test_version_zero_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        build_image(0, b"")


# Get info (fn 12).


def test_info_reports_limits_and_the_running_version_with_nothing_staged() -> None:
    i = info(guest())
    assert (i.storage_size, i.max_send_len, i.run_version, i.updated_version) == (
        STORAGE_SIZE, MAX_SEND_LEN, INITIAL_VERSION, 0)


def test_info_with_input_is_invalid() -> None:
    assert guest().call(12, b"\0", handle=DIMM, revision=2)[0] == Status.INVALID_INPUT


def test_firmware_functions_are_revision_2_only() -> None:
    assert guest().call(12, handle=DIMM, revision=1)[0] == Status.NOT_SUPPORTED


# Start (fn 13).


def test_start_hands_out_a_non_zero_context() -> None:
    status, context = start(guest())
    assert status == 0 and context != 0


def test_start_while_an_update_is_open_is_busy() -> None:
    g = guest()
    start(g)
    assert start(g) == (START_BUSY, 0)


def test_start_while_a_finished_update_awaits_its_query_is_busy() -> None:
    g = guest()
    upload(g, IMAGE)
    assert start(g)[0] == START_BUSY


def test_each_session_gets_a_new_context() -> None:
    g = guest()
    _, first = start(g)
    assert finish(g, first, 1) == ABORTED
    assert start(g)[1] != first


def test_start_with_input_is_invalid() -> None:
    assert guest().call(13, b"\0\0\0\0", handle=DIMM, revision=2)[0] == Status.INVALID_INPUT


# Send data (fn 14).


def test_send_without_a_session_is_an_invalid_context() -> None:
    assert send(guest(), 1, 0, b"x") == CONTEXT_INVALID


def test_send_with_another_context_is_an_invalid_context() -> None:
    g = guest()
    _, context = start(g)
    assert send(g, context + 1, 0, b"x") == CONTEXT_INVALID


def test_send_whose_length_field_disagrees_with_its_data_is_invalid() -> None:
    g = guest()
    _, context = start(g)
    assert send(g, context, 0, b"abc", length=4) == Status.INVALID_INPUT


def test_send_shorter_than_its_header_is_invalid() -> None:
    g = guest()
    start(g)
    assert g.call(14, b"\0" * 11, handle=DIMM, revision=2)[0] == Status.INVALID_INPUT


@pytest.mark.parametrize("offset, size", [
    (0, 0),  # nothing
    (STORAGE_SIZE - 1, 2),  # past the storage: an oversized image
])
def test_send_outside_the_limits_is_invalid(offset: int, size: int) -> None:
    g = guest()
    _, context = start(g)
    fw = g.dispatcher.target(DIMM).device.firmware
    fw.image = bytearray(STORAGE_SIZE)  # as if everything before had been sent
    assert send(g, context, offset, b"x" * size) == Status.INVALID_INPUT


def test_send_longer_than_max_send_len_is_invalid() -> None:
    fw = Firmware()  # the DSM page cannot carry it; the machine refuses it all the same
    _, context = fw.start()
    assert fw.send(context, 0, b"x" * (MAX_SEND_LEN + 1)) == Status.INVALID_INPUT


def test_an_input_longer_than_the_page_is_invalid() -> None:
    g = guest()
    start(g)
    page = bytearray(encode_request(DIMM, 2, 14, bytes(12), input_length=4096))
    assert int.from_bytes(g.dispatcher.dispatch(page)[4:8], "little") == Status.INVALID_INPUT


def test_send_leaving_a_gap_is_invalid() -> None:
    g = guest()
    _, context = start(g)
    assert send(g, context, 0, b"abcd") == 0
    assert send(g, context, 5, b"e") == Status.INVALID_INPUT


def test_a_replayed_send_overwrites_the_same_bytes() -> None:
    g = guest()
    _, context = start(g)
    assert send(g, context, 0, IMAGE[:100]) == 0
    assert send(g, context, 0, IMAGE[:100]) == 0
    for offset in range(100, len(IMAGE), MAX_SEND_LEN):
        assert send(g, context, offset, IMAGE[offset:offset + MAX_SEND_LEN]) == 0
    assert finish(g, context) == 0
    assert query(g, context) == (0, NEW)


def test_send_after_finish_is_an_invalid_context() -> None:
    g = guest()
    context = upload(g, IMAGE)
    assert send(g, context, 0, b"x") == CONTEXT_INVALID


# Finish (fn 15) and query (fn 16).


def test_a_verified_image_is_staged_by_the_query() -> None:
    g = guest()
    context = upload(g, IMAGE)
    assert info(g).updated_version == 0  # not before the query reports it
    assert query(g, context) == (0, NEW)
    i = info(g)
    assert (i.run_version, i.updated_version) == (INITIAL_VERSION, NEW)


def test_a_corrupt_image_is_refused_by_the_query_and_nothing_is_staged() -> None:
    g = guest()
    bad = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])
    context = upload(g, bad)
    assert query(g, context) == (BAD_IMAGE, 0)
    assert info(g).updated_version == 0


def test_a_refused_image_keeps_the_previously_staged_one() -> None:
    g = guest()
    stage(g)
    context = upload(g, b"not an image")
    assert query(g, context) == (BAD_IMAGE, 0)
    assert info(g).updated_version == NEW


def test_finish_without_a_session_is_an_invalid_context() -> None:
    assert finish(guest(), 1) == CONTEXT_INVALID


def test_finish_with_another_context_is_an_invalid_context() -> None:
    g = guest()
    _, context = start(g)
    assert finish(g, context + 1) == CONTEXT_INVALID


def test_finish_twice_is_already_done() -> None:
    g = guest()
    context = upload(g, IMAGE)
    assert finish(g, context) == FINISH_DONE


def test_finish_with_unknown_control_flags_is_invalid() -> None:
    g = guest()
    _, context = start(g)
    assert finish(g, context, 2) == Status.INVALID_INPUT


def test_finish_with_reserved_bytes_set_is_invalid() -> None:
    g = guest()
    _, context = start(g)
    assert finish(g, context, reserved=b"\0\1\0") == Status.INVALID_INPUT


def test_abort_while_receiving_reports_aborted_and_closes_the_session() -> None:
    g = guest()
    _, context = start(g)
    send(g, context, 0, IMAGE[:64])
    assert finish(g, context, 1) == ABORTED
    assert query(g, context)[0] == CONTEXT_INVALID
    assert start(g)[0] == 0


def test_abort_after_finish_drops_the_verified_image() -> None:
    g = guest()
    context = upload(g, IMAGE)
    assert finish(g, context, 1) == ABORTED
    assert info(g).updated_version == 0


def test_query_before_finish_is_a_sequence_error() -> None:
    g = guest()
    _, context = start(g)
    assert query(g, context) == (SEQUENCE, 0)


def test_query_with_another_context_is_an_invalid_context() -> None:
    g = guest()
    context = upload(g, IMAGE)
    assert query(g, context + 1)[0] == CONTEXT_INVALID


def test_a_replayed_query_is_an_invalid_context() -> None:
    g = guest()
    context = upload(g, IMAGE)
    query(g, context)
    assert query(g, context) == (CONTEXT_INVALID, 0)


def test_query_with_a_wrong_length_is_invalid() -> None:
    g = guest()
    context = upload(g, IMAGE)
    assert g.call(16, Int32ul.build(context) + b"\0", handle=DIMM, revision=2)[0] == Status.INVALID_INPUT


def test_each_dimm_has_its_own_session() -> None:
    g = guest()
    _, first = start(g, DIMM)
    _, other = start(g, OTHER)
    assert finish(g, first, 1) == ABORTED
    assert send(g, other, 0, b"x", handle=OTHER) == 0


# Activation: DIMM fns 29/30, bus fns 1/2 (handle INTEL_BUS_HANDLE).


def test_a_new_dimm_is_idle_with_no_result() -> None:
    a = dimm_activate_info(guest())
    assert (a.state, a.result) == (0, RESULT_NONE)


def test_arm_and_disarm_show_in_the_dimm_and_bus_state() -> None:
    g = guest()
    assert arm(g) == 0
    assert (dimm_activate_info(g).state, bus_info(g).state) == (1, 1)
    assert arm(g, 0) == 0
    assert (dimm_activate_info(g).state, bus_info(g).state) == (0, 0)


def test_arm_with_another_value_is_invalid() -> None:
    assert arm(guest(), 2) == Status.INVALID_INPUT


def test_arm_with_a_wrong_length_is_invalid() -> None:
    assert guest().call(30, b"\1\0", handle=DIMM, revision=2)[0] == Status.INVALID_INPUT


def test_bus_offers_live_activation_within_its_quiesce_limit() -> None:
    b = bus_info(guest())
    assert b.capability == 1 << 1 and b.activate_tmo <= b.max_quiesce_tmo


def test_bus_mask_offers_functions_1_and_2_at_revision_1() -> None:
    page = guest().dispatcher.dispatch(encode_request(INTEL_BUS_HANDLE, 1, 0))
    assert int.from_bytes(page[4:8], "little") == 0b111


def test_activation_runs_the_staged_version_and_clears_it() -> None:
    g = guest()
    stage(g)
    arm(g)
    assert activate(g) == 0
    i, a = info(g), dimm_activate_info(g)
    assert (i.run_version, i.updated_version, a.state, a.result) == (NEW, 0, 0, RESULT_SUCCESS)


def test_activation_leaves_an_unarmed_dimm_alone() -> None:
    g = guest()
    stage(g, handle=OTHER)
    stage(g)
    arm(g)
    activate(g)
    assert (info(g, OTHER).run_version, info(g, OTHER).updated_version) == (INITIAL_VERSION, NEW)


def test_activation_with_nothing_armed_is_refused() -> None:
    g = guest()
    stage(g)
    assert activate(g) == BUS_STATUS_NO_ARM
    assert info(g).run_version == INITIAL_VERSION


def test_activation_of_armed_dimms_without_staged_firmware_reports_not_staged() -> None:
    g = guest()
    arm(g)
    assert activate(g) == BUS_STATUS_NO_FIRMWARE
    assert (dimm_activate_info(g).result, dimm_activate_info(g).state) == (RESULT_NOT_STAGED, 0)


def test_a_replayed_activation_finds_nothing_armed() -> None:
    g = guest()
    stage(g)
    arm(g)
    activate(g)
    assert activate(g) == BUS_STATUS_NO_ARM


def test_activation_with_an_unknown_iodev_state_is_invalid() -> None:
    g = guest()
    arm(g)
    assert activate(g, 2) == Status.INVALID_INPUT
    assert dimm_activate_info(g).state == 1


def test_a_bus_without_intel_dimms_offers_no_activation() -> None:
    config = from_mapping({"domid": 1, "nvdimm": [{"backing": "nv.img", "size": "2M", "family": "msft"}]})
    dispatcher = build_dispatcher(config, {}).dispatcher
    assert dispatcher.mask(INTEL_BUS_HANDLE, 1) == 0


# Power cycle and saved form.


def test_power_on_runs_a_staged_version_and_disarms() -> None:
    fw = Firmware(staged_version=NEW, armed=True)
    fw.power_on()
    assert (fw.running_version, fw.staged_version, fw.armed) == (NEW, 0, False)


def test_power_on_loses_an_upload_in_flight() -> None:
    fw = Firmware()
    _, context = fw.start()
    fw.power_on()
    assert fw.send(context, 0, b"x") == CONTEXT_INVALID


def test_firmware_round_trips_through_the_file_format() -> None:
    saved = {0: Firmware(NEW, 3, True, RESULT_SUCCESS, 41), 5: Firmware()}
    restored = parse_firmware_file(firmware_file_bytes(saved))
    assert {s: (f.running_version, f.staged_version, f.armed, f.result, f.last_context)
            for s, f in restored.items()} == {0: (NEW, 3, True, RESULT_SUCCESS, 41), 5: (INITIAL_VERSION, 0, False, 0, 0)}


def test_a_corrupt_firmware_file_is_refused() -> None:
    blob = bytearray(firmware_file_bytes({0: Firmware()}))
    blob[20] ^= 0xFF
    with pytest.raises(StateFormatError):
        parse_firmware_file(bytes(blob))


def test_a_firmware_blob_with_running_version_zero_is_refused() -> None:
    with pytest.raises(StateFormatError):
        Firmware.from_bytes(Firmware(running_version=0).to_bytes())


def test_contexts_continue_after_a_restore() -> None:
    fw = Firmware(last_context=41)
    assert fw.start() == (0, 42)


def test_the_context_counter_wraps_past_zero() -> None:
    fw = Firmware(last_context=0xFFFFFFFF)
    assert fw.start() == (0, 1)


# Any sequence of calls (the guest is untrusted): every reply is a documented status and only
# a verified image is ever staged or run.

OTHER_VERSION = 0x0000_0009_0000_0001
OTHER_IMAGE = build_image(OTHER_VERSION, b"other")
VALID_VERSIONS = {0, INITIAL_VERSION, NEW, OTHER_VERSION}
DOCUMENTED = {
    13: {0, START_BUSY},
    14: {0, CONTEXT_INVALID, Status.INVALID_INPUT},
    15: {0, CONTEXT_INVALID, FINISH_DONE, ABORTED, Status.INVALID_INPUT},
    16: {0, CONTEXT_INVALID, SEQUENCE, BAD_IMAGE, Status.INVALID_INPUT},
    30: {0, Status.INVALID_INPUT},
    2: {0, BUS_STATUS_NO_ARM, BUS_STATUS_NO_FIRMWARE, Status.INVALID_INPUT},
}


@st.composite
def firmware_ops(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["start", "send", "finish", "query", "arm", "activate"]))
    context = draw(st.one_of(st.just(None), st.integers(0, 4), st.integers(0, 0xFFFFFFFF)))  # None: the live one
    image = draw(st.sampled_from([IMAGE, OTHER_IMAGE, IMAGE[:-1] + b"\xff"]))
    offset = draw(st.one_of(st.integers(0, len(image)), st.integers(0, STORAGE_SIZE)))
    size = draw(st.integers(0, 64))
    flags = draw(st.integers(0, 3))
    return kind, context, image, offset, size, flags


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(firmware_ops(), max_size=25))
def test_any_call_sequence_gets_documented_statuses_and_stages_only_verified_images(ops: list[tuple]) -> None:
    g = guest()
    live = 0
    for kind, context, image, offset, size, flags in ops:
        ctx = live if context is None else context
        if kind == "start":
            status, got = start(g)
            live = got if status == 0 else live
            assert status in DOCUMENTED[13]
        elif kind == "send":
            assert send(g, ctx, offset, image[offset:offset + size]) in DOCUMENTED[14]
        elif kind == "finish":
            assert finish(g, ctx, flags) in DOCUMENTED[15]
        elif kind == "query":
            assert query(g, ctx)[0] in DOCUMENTED[16]
        elif kind == "arm":
            assert arm(g, flags) in DOCUMENTED[30]
        else:
            assert activate(g, flags) in DOCUMENTED[2]
        i = info(g)
        assert i.run_version in VALID_VERSIONS and i.updated_version in VALID_VERSIONS
