"""The DSM dispatcher: routing by handle, function and revision; masks; status codes; the page."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from construct import Int32ul
from hypothesis import given, settings
from hypothesis import strategies as st

from acpi.dsm_buffer import INTEL_BUS_HANDLE, MAX_INPUT, MAX_PAYLOAD, PAGE_SIZE
from pmemd.config import Config, from_mapping
from pmemd.dsm import firmware
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.call import MAX_OUTPUT, Call, InvalidInput, Reply, Status, parse_input
from pmemd.dsm.devices import Dimm, IntelBus, Root, slot_to_handle
from pmemd.dsm.dispatcher import Dispatcher, Target
from pmemd.dsm.families import intel_dimm_functions, label_methods_dimm_functions, nfit_root_functions
from pmemd.dsm.firmware_functions import intel_bus_functions
from pmemd.dsm.functions import FunctionTable
from pmemd.dsm.label_store import MemoryLabelStore
from pmemd.dsm.page import decode_reply, decode_request, encode_request

LABEL_SIZE = 128 * 1024
LABEL_MASK = 1 << 0 | 1 << 4 | 1 << 5 | 1 << 6  # 0x71, as QEMU
SMART_MASK = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 10  # SMART, thresholds, latch shutdown status
SMART_REVISION_2_MASK = 1 << 0 | 1 << 17 | 1 << 18  # set thresholds, inject SMART
FIRMWARE_MASK = 0b11111 << 12 | 1 << 29 | 1 << 30  # FW update 12-16, FW activate 29/30
SECURITY_MASK = sum(1 << f for f in (19, 20, 21, 22, 23, 26, 27))  # no PMEM store: no erasing 24, 25, 28
ROOT_MASK = 1 << 0 | 0b1111 << 1 | 1 << 5 | 0b111 << 7  # ARS 1-4, translate 5, inject 7-9


def guest_config(*label_sizes: int) -> Config:
    """A guest with one 2 MiB-PMEM DIMM per label size, in slots 0, 1, ..."""
    return from_mapping(
        {
            "domid": 1,
            "nvdimm": [
                {"backing": f"nv{i}.img", "size": 2 * 1024 * 1024 + size, "label_size": size}
                for i, size in enumerate(label_sizes)
            ],
        },
        base_dir=Path("/nonexistent"),
    )


def labelled_dispatcher() -> Dispatcher:
    """Slot 0 with a label area, slot 1 without."""
    return build_dispatcher(guest_config(LABEL_SIZE, 0), {0: MemoryLabelStore(LABEL_SIZE)}).dispatcher


def status_of(reply: bytes) -> int:
    return Int32ul.parse(decode_reply(reply)[:4])


def mask_of(reply: bytes) -> int:
    payload = decode_reply(reply)
    assert len(payload) == 4
    return Int32ul.parse(payload)


def call(dispatcher: Dispatcher, handle: int, revision: int, function: int, data: bytes = b"") -> bytes:
    return dispatcher.dispatch(encode_request(handle, revision, function, data))


def echo(call: Call, device: object) -> Reply:
    return Reply.success(call.input)


def one_function_dispatcher(function: int, revision: int, handler=echo) -> Dispatcher:
    table: FunctionTable[object] = FunctionTable("test")
    table.register(function, revision, handler)
    return Dispatcher({1: Target(table, object())})


# Function 0: masks per target and revision.


def test_dimm_with_labels_revision_1_mask_lists_label_and_smart_functions() -> None:
    assert mask_of(call(labelled_dispatcher(), slot_to_handle(0), 1, 0)) == LABEL_MASK | SMART_MASK


def test_dimm_revision_2_mask_lists_only_revision_2_functions() -> None:
    assert mask_of(call(labelled_dispatcher(), slot_to_handle(0), 2, 0)) == SMART_REVISION_2_MASK | FIRMWARE_MASK | SECURITY_MASK


def test_dimm_without_label_area_advertises_no_label_functions() -> None:
    assert mask_of(call(labelled_dispatcher(), slot_to_handle(1), 1, 0)) == SMART_MASK


def test_root_mask_lists_ars_translate_and_injection() -> None:
    assert mask_of(call(labelled_dispatcher(), 0, 1, 0)) == ROOT_MASK


def test_each_function_is_listed_only_in_its_own_revisions_mask() -> None:
    table: FunctionTable[object] = FunctionTable("intel-like")
    table.register(1, 1, echo)
    table.register(10, 1, echo)
    table.register(17, 2, echo)
    dispatcher = Dispatcher({1: Target(table, object())})
    assert mask_of(call(dispatcher, 1, 1, 0)) == 1 << 0 | 1 << 1 | 1 << 10
    assert mask_of(call(dispatcher, 1, 2, 0)) == 1 << 0 | 1 << 17


@pytest.mark.parametrize("revision", [0, 3, 0xFFFFFFFF])
def test_function_zero_with_unknown_revision_is_an_empty_mask(revision: int) -> None:
    assert mask_of(call(labelled_dispatcher(), slot_to_handle(0), revision, 0)) == 0


def test_root_functions_are_advertised_for_revision_1_only() -> None:
    table: FunctionTable[Root] = FunctionTable("root")
    table.register(1, 1, echo)
    dispatcher = Dispatcher({0: Target(table, Root(()))})
    assert mask_of(call(dispatcher, 0, 1, 0)) == 0b11
    assert mask_of(call(dispatcher, 0, 2, 0)) == 0


def test_unavailable_function_is_not_advertised() -> None:
    table: FunctionTable[object] = FunctionTable("test")
    table.register(1, 1, echo)
    table.register(2, 1, echo, available=lambda device: False)
    assert mask_of(Dispatcher({1: Target(table, object())}).dispatch(encode_request(1, 1, 0))) == 0b11


def test_unknown_handle_function_zero_is_an_empty_mask() -> None:
    assert mask_of(call(labelled_dispatcher(), 0x10000, 1, 0)) == 0


def test_function_zero_reply_is_the_mask_alone() -> None:
    reply = call(labelled_dispatcher(), slot_to_handle(0), 1, 0)
    assert reply == Int32ul.build(8) + Int32ul.build(LABEL_MASK | SMART_MASK)


# Routing and status codes.


def test_unknown_handle_is_no_such_device() -> None:
    assert status_of(call(labelled_dispatcher(), slot_to_handle(7), 1, 4)) == Status.NO_SUCH_DEVICE


def test_unknown_function_is_not_supported() -> None:
    assert status_of(call(labelled_dispatcher(), slot_to_handle(0), 1, 9)) == Status.NOT_SUPPORTED


def test_known_function_with_wrong_revision_is_not_supported() -> None:
    assert status_of(call(labelled_dispatcher(), slot_to_handle(0), 2, 4)) == Status.NOT_SUPPORTED


def test_root_function_without_handler_is_not_supported() -> None:
    assert status_of(call(labelled_dispatcher(), 0, 1, 6)) == Status.NOT_SUPPORTED


def test_unavailable_function_is_not_supported() -> None:
    table: FunctionTable[object] = FunctionTable("test")
    table.register(2, 1, echo, available=lambda device: False)
    dispatcher = Dispatcher({1: Target(table, object())})
    assert status_of(call(dispatcher, 1, 1, 2)) == Status.NOT_SUPPORTED


def test_handler_receives_the_call_and_its_targets_device() -> None:
    seen = []
    table: FunctionTable[str] = FunctionTable("test")
    table.register(3, 1, lambda call, device: seen.append((call, device)) or Reply.success())
    Dispatcher({5: Target(table, "dimm-4")}).dispatch(encode_request(5, 1, 3, b"in"))
    assert seen == [(Call(5, 1, 3, b"in"), "dimm-4")]


def test_handler_output_follows_the_status_word() -> None:
    reply = call(one_function_dispatcher(3, 1), 1, 1, 3, b"abc")
    assert decode_reply(reply) == Int32ul.build(Status.SUCCESS) + b"abc"


def test_reply_length_word_counts_itself() -> None:
    reply = call(one_function_dispatcher(3, 1), 1, 1, 3, b"abcde")
    assert Int32ul.parse(reply[:4]) == len(reply) == 4 + 4 + 5


def test_input_length_over_max_input_is_invalid_input() -> None:
    page = encode_request(slot_to_handle(0), 1, 5, input_length=MAX_INPUT + 1)
    assert status_of(labelled_dispatcher().dispatch(page)) == Status.INVALID_INPUT


def test_input_length_over_max_input_for_function_zero_is_an_empty_mask() -> None:
    page = encode_request(slot_to_handle(0), 1, 0, input_length=0xFFFFFFFF)
    assert mask_of(labelled_dispatcher().dispatch(page)) == 0


def test_input_of_max_input_bytes_reaches_the_handler() -> None:
    data = bytes(range(256)) * (MAX_INPUT // 256) + bytes(MAX_INPUT % 256)
    reply = call(one_function_dispatcher(3, 1), 1, 1, 3, data)
    assert decode_reply(reply)[4:] == data


def test_handler_invalid_input_is_status_3() -> None:
    def strict(call: Call, device: object) -> Reply:
        parse_input(Int32ul, call.input)  # not Terminated: InvalidInput only when short
        raise InvalidInput("rejected")

    assert status_of(call(one_function_dispatcher(3, 1, strict), 1, 1, 3)) == Status.INVALID_INPUT


def test_handler_exception_is_hardware_error() -> None:
    def broken(call: Call, device: object) -> Reply:
        raise ZeroDivisionError

    assert status_of(call(one_function_dispatcher(3, 1, broken), 1, 1, 3)) == Status.HARDWARE_ERROR


def test_handler_exception_is_logged() -> None:
    def broken(call: Call, device: object) -> Reply:
        raise ZeroDivisionError

    with structlog.testing.capture_logs() as logs:
        call(one_function_dispatcher(3, 1, broken), 1, 1, 3)
    assert [(e["event"], e["log_level"], e["function"]) for e in logs] == [("dsm handler failed", "error", 3)]


def test_handler_output_too_large_for_the_page_is_hardware_error() -> None:
    def bloated(call: Call, device: object) -> Reply:
        return Reply.success(bytes(MAX_OUTPUT + 1))

    assert status_of(call(one_function_dispatcher(3, 1, bloated), 1, 1, 3)) == Status.HARDWARE_ERROR


def test_handler_output_filling_the_page_is_delivered() -> None:
    def full(call: Call, device: object) -> Reply:
        return Reply.success(bytes(MAX_OUTPUT))

    reply = call(one_function_dispatcher(3, 1, full), 1, 1, 3)
    assert len(reply) == PAGE_SIZE == 4 + MAX_PAYLOAD


def test_handler_returning_a_non_reply_is_hardware_error() -> None:
    reply = call(one_function_dispatcher(3, 1, lambda call, device: (0, b"")), 1, 1, 3)
    assert status_of(reply) == Status.HARDWARE_ERROR


def test_extended_status_is_passed_through() -> None:
    reply = call(one_function_dispatcher(3, 1, lambda call, device: Reply(0x10000)), 1, 1, 3)
    assert status_of(reply) == 0x10000


def test_failing_availability_check_is_an_empty_mask() -> None:
    table: FunctionTable[object] = FunctionTable("test")
    table.register(1, 1, echo, available=lambda device: 1 // 0)
    with structlog.testing.capture_logs():
        assert mask_of(Dispatcher({1: Target(table, object())}).dispatch(encode_request(1, 1, 0))) == 0


# The page: private copy, size.


def test_decoded_call_is_a_private_copy_of_the_page() -> None:
    page = bytearray(encode_request(1, 1, 3, b"original"))
    decoded = decode_request(page)
    page[:] = bytes(PAGE_SIZE)
    assert decoded == Call(1, 1, 3, b"original")


def test_guest_rewriting_the_page_mid_call_changes_nothing() -> None:
    page = bytearray(encode_request(1, 1, 3, b"original"))

    def rewrite_then_echo(call: Call, device: object) -> Reply:
        page[:] = encode_request(2, 2, 4, b"forgery!")
        return Reply.success(call.input)

    reply = one_function_dispatcher(3, 1, rewrite_then_echo).dispatch(page)
    assert decode_reply(reply)[4:] == b"original"


def test_page_of_wrong_size_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        labelled_dispatcher().dispatch(bytes(PAGE_SIZE - 1))


# Registration.


@pytest.mark.parametrize("function", [0, 32, -1])
def test_registration_rejects_functions_a_mask_cannot_carry(function: int) -> None:
    with pytest.raises(ValueError):
        FunctionTable("test").register(function, 1, echo)


def test_registration_rejects_a_duplicate_function_and_revision() -> None:
    table: FunctionTable[object] = FunctionTable("test")
    table.register(1, 1, echo)
    with pytest.raises(ValueError):
        table.register(1, 1, echo)


def test_one_function_may_be_registered_at_two_revisions() -> None:
    table: FunctionTable[object] = FunctionTable("test")
    table.register(1, 1, lambda call, device: Reply.success(b"r1"))
    table.register(1, 2, lambda call, device: Reply.success(b"r2"))
    dispatcher = Dispatcher({1: Target(table, object())})
    assert decode_reply(call(dispatcher, 1, 2, 1))[4:] == b"r2"


# Fuzz: whatever the guest writes, the reply is well formed.

DEFINED_STATUSES = set(Status) | {
    firmware.STATUS_CONTEXT_INVALID, firmware.STATUS_FINISH_DONE, firmware.STATUS_BAD_IMAGE,
    firmware.STATUS_ABORTED, firmware.BUS_STATUS_NO_ARM, firmware.BUS_STATUS_NO_FIRMWARE,
}


def fuzz_dispatcher() -> Dispatcher:
    """Labels (writable, read-only, none), the other families, the Intel bus family, plus a
    handler that fails on odd input."""
    writable, read_only, unlabelled = guest_config(LABEL_SIZE, LABEL_SIZE, 0).nvdimms
    dimms = intel_dimm_functions()
    flaky: FunctionTable[None] = FunctionTable("flaky")
    flaky.register(7, 1, lambda call, device: Reply.success(bytes(len(call.input) // (len(call.input) % 2))))
    intel = {1: Dimm(writable, MemoryLabelStore(LABEL_SIZE)), 2: Dimm(read_only, MemoryLabelStore(LABEL_SIZE, writable=False)),
             3: Dimm(unlabelled, None)}
    return Dispatcher(
        {
            0: Target(nfit_root_functions(), Root(())),
            **{handle: Target(dimms, dimm) for handle, dimm in intel.items()},
            4: Target(label_methods_dimm_functions("msft"), Dimm(writable, MemoryLabelStore(LABEL_SIZE))),
            5: Target(label_methods_dimm_functions("hyperv"), Dimm(unlabelled, None)),
            6: Target(label_methods_dimm_functions("hpe1"), Dimm(unlabelled, None)),
            9: Target(flaky, None),
            INTEL_BUS_HANDLE: Target(intel_bus_functions(), IntelBus(intel)),
        }
    )


u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def label_calls(draw: st.DrawFn) -> bytes:
    """Mostly well-formed label calls, so that success paths are fuzzed too."""
    handle = draw(st.integers(1, 3))
    function = draw(st.sampled_from([4, 5, 6]))
    offset = draw(st.one_of(st.integers(0, LABEL_SIZE + 8), u32))
    length = draw(st.one_of(st.integers(0, 4100), u32))
    data = b"" if function == 4 else Int32ul.build(offset) + Int32ul.build(length)
    if function == 6:
        data += draw(st.binary(min_size=min(length, MAX_INPUT - 8), max_size=min(length, MAX_INPUT - 8)))
    return encode_request(handle, 1, function, data)


@st.composite
def arbitrary_calls(draw: st.DrawFn) -> bytes:
    handle = draw(st.one_of(st.integers(0, 6), st.just(9), st.just(INTEL_BUS_HANDLE), u32))
    revision = draw(st.one_of(st.integers(0, 3), u32))
    function = draw(st.one_of(st.integers(0, 31), u32))
    data = draw(st.one_of(st.binary(max_size=16), st.binary(max_size=MAX_INPUT)))
    input_length = draw(st.one_of(st.just(len(data)), u32))
    page = bytearray(encode_request(handle, revision, function, data, input_length=input_length))
    if draw(st.booleans()):
        page[len(page) - 16 :] = draw(st.binary(min_size=16, max_size=16))
    return bytes(page)


pages = st.one_of(label_calls(), arbitrary_calls())


@settings(max_examples=400, deadline=None)
@given(page=pages)
def test_any_page_gets_a_well_formed_reply(page: bytes) -> None:
    with structlog.testing.capture_logs():
        reply = fuzz_dispatcher().dispatch(page)
    length = Int32ul.parse(reply[:4])
    assert length == len(reply)
    assert 8 <= length <= PAGE_SIZE
    if Int32ul.parse(page[8:12]) == 0:  # function 0: the mask alone
        assert length == 8
    else:
        assert status_of(reply) in DEFINED_STATUSES


@settings(max_examples=200, deadline=None)
@given(page=st.binary(min_size=16, max_size=PAGE_SIZE).map(lambda b: b.ljust(PAGE_SIZE, b"\0")))
def test_random_page_bytes_get_a_well_formed_reply(page: bytes) -> None:
    with structlog.testing.capture_logs():
        reply = fuzz_dispatcher().dispatch(page)
    assert Int32ul.parse(reply[:4]) == len(reply) >= 8
