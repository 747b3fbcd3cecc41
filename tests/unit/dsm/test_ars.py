"""NFIT root functions 1-5 as a guest drives them: ARS capabilities, start, status, clear, translate.

Every call goes through `Dispatcher.dispatch` with a page from `page.encode_request`; the
scrub clock is a fake the test advances, so "scrubbing takes time" is checked without sleeping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from construct import Int64ul

from acpi.dsm_buffer import MAX_PAYLOAD
from pmemd.config import from_mapping
from pmemd.daemon.scrubber import ScrubCompleted, run_scrubber
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.call import Status
from pmemd.dsm.devices import slot_to_handle
from pmemd.dsm.inject import inject_error
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.page import encode_request
from pmemd.dsm.root_layouts import (
    ARS_START_BUSY,
    ARS_STATUS_BUSY,
    ARS_STATUS_INTERRUPTED,
    MAX_ARS_RECORDS,
    ArsCapOutput,
    ArsStartOutput,
    ArsStatusOutput,
    ClearErrorOutput,
    TranslateSpaOutput,
)
from tests.harness.dsm import (
    PMEM,
    RATE,
    ROOT,
    FakeClock,
    Guest,
    MiB,
    guest,
    records_of,
    rng,
    scrub_to_completion,
    start,
    start_input,
    status,
    two_dimm_config,
)


def cap(g: Guest, address: int, length: int) -> tuple[int, bytes]:
    return g.call(1, rng(address, length))


# ARS capabilities (fn 1).


def test_cap_of_a_pmem_spa_offers_persistent_scrub() -> None:
    g = guest()
    code, output = cap(g, *g.spa(1))
    assert code == 2 << 16  # low status 0, extended status: persistent scrub


def test_cap_max_ars_out_fits_one_reply() -> None:
    g = guest()
    out = ArsCapOutput.parse(cap(g, *g.spa())[1])
    assert out.max_ars_out == 48 + 24 * MAX_ARS_RECORDS <= MAX_PAYLOAD


def test_cap_clear_error_unit_is_a_power_of_two() -> None:
    g = guest()
    unit = ArsCapOutput.parse(cap(g, *g.spa())[1]).clear_err_unit
    assert unit > 0 and unit & (unit - 1) == 0


def test_cap_of_part_of_a_spa_range_is_answered() -> None:
    g = guest()
    base, _ = g.spa()
    assert cap(g, base + 4096, 512)[0] == 2 << 16


@pytest.mark.parametrize(
    "where",
    ["guest RAM", "past the end", "straddling two DIMMs", "empty"],
)
def test_cap_outside_one_guest_spa_range_is_invalid_input(where: str) -> None:
    g = guest()
    base0, size0 = g.spa(0)
    base1, size1 = g.spa(1)
    address, length = {
        "guest RAM": (0x100000, 4096),
        "past the end": (base1 + size1 - 4096, 8192),
        "straddling two DIMMs": (base0, base1 + size1 - base0),
        "empty": (base0, 0),
    }[where]
    assert cap(g, address, length) == (Status.INVALID_INPUT, b"")


# ARS start (fn 2) and status (fn 3).


def test_status_before_any_scrub_is_success_with_no_records() -> None:
    code, parsed = status(guest())
    assert code == Status.SUCCESS
    assert (parsed.header.out_length, parsed.header.length, parsed.records) == (48, 0, [])


def test_long_scrub_estimates_its_duration_from_the_rate() -> None:
    g = guest()
    code, output = start(g, *g.spa())
    assert (code, ArsStartOutput.parse(output).scrub_time) == (Status.SUCCESS, PMEM // RATE)


def test_status_while_a_scrub_sweeps_is_busy() -> None:
    g = guest()
    start(g, *g.spa())
    g.clock.advance(PMEM / RATE / 2)
    assert status(g)[0] == ARS_STATUS_BUSY


def test_scrub_is_done_once_its_range_has_been_swept() -> None:
    g = guest()
    start(g, *g.spa())
    g.clock.advance(PMEM / RATE)
    assert status(g)[0] == Status.SUCCESS


def test_start_during_a_scrub_is_refused_as_busy() -> None:
    g = guest()
    start(g, *g.spa(0))
    assert start(g, *g.spa(1)) == (ARS_START_BUSY, b"")


def test_start_after_a_scrub_finished_is_accepted() -> None:
    g = guest()
    start(g, *g.spa(0))
    g.clock.advance(PMEM / RATE)
    assert start(g, *g.spa(1))[0] == Status.SUCCESS


def test_a_refused_start_leaves_the_running_scrub_in_place() -> None:
    g = guest()
    base, size = g.spa(0)
    start(g, base, size)
    start(g, *g.spa(1))
    g.clock.advance(size / RATE)
    header = status(g)[1].header
    assert (header.address, header.length) == (base, size)


def test_start_outside_the_guest_spa_is_invalid_input() -> None:
    g = guest()
    assert start(g, 0x100000, 4096) == (Status.INVALID_INPUT, b"")


def test_start_during_a_scrub_with_a_bad_range_is_invalid_input() -> None:
    g = guest()
    start(g, *g.spa())
    assert start(g, 0x100000, 4096)[0] == Status.INVALID_INPUT


def test_volatile_scrub_is_not_supported() -> None:
    g = guest()
    assert start(g, *g.spa(), type=1) == (Status.NOT_SUPPORTED, b"")


@pytest.mark.parametrize("type", [0, 4, 0x8002])
def test_start_with_no_or_unknown_scrub_type_is_invalid_input(type: int) -> None:
    g = guest()
    assert start(g, *g.spa(), type=type)[0] == Status.INVALID_INPUT


def test_start_with_reserved_flags_is_invalid_input() -> None:
    g = guest()
    assert start(g, *g.spa(), flags=0x04)[0] == Status.INVALID_INPUT


def test_return_previous_data_answers_at_once_with_known_records() -> None:
    g = guest()
    base, _ = g.spa()
    inject_error(g.root, base + 8192, 512)
    code, output = start(g, *g.spa(), flags=0x02)
    assert (code, ArsStartOutput.parse(output).scrub_time) == (Status.SUCCESS, 0)
    code, parsed = status(g)
    assert (code, records_of(parsed)) == (Status.SUCCESS, [(base + 8192, 512)])


def test_status_echoes_the_started_range_and_type() -> None:
    g = guest()
    base, size = g.spa(1)
    start(g, base + MiB, size - MiB, flags=0x02)
    header = status(g)[1].header
    assert (header.address, header.length, header.type) == (base + MiB, size - MiB, 2)


def test_records_are_clipped_to_the_started_range() -> None:
    g = guest()
    base, _ = g.spa()
    inject_error(g.root, base, 8192)
    start(g, base + 4096, MiB, flags=0x02)
    assert records_of(status(g)[1]) == [(base + 4096, 4096)]


def test_records_carry_the_handle_of_the_dimm_holding_them() -> None:
    g = guest()
    base, _ = g.spa(1)
    inject_error(g.root, base, 512)
    start(g, *g.spa(1), flags=0x02)
    assert [r.handle for r in status(g)[1].records] == [slot_to_handle(1)]


def test_out_length_counts_the_status_word_and_every_record() -> None:
    g = guest()
    base, _ = g.spa()
    for i in range(3):
        inject_error(g.root, base + i * 4096, 256)
    start(g, *g.spa(), flags=0x02)
    assert status(g)[1].header.out_length == 48 + 24 * 3


def test_records_found_are_those_present_when_the_sweep_ends() -> None:
    g = guest()
    base, _ = g.spa()
    start(g, *g.spa())
    inject_error(g.root, base + MiB, 256)
    g.clock.advance(PMEM / RATE)
    assert records_of(status(g)[1]) == [(base + MiB, 256)]


# Overflow: more records than one reply carries.


def overflowing_guest(n: int = MAX_ARS_RECORDS + 10) -> tuple[Guest, list[tuple[int, int]]]:
    g = guest()
    base, _ = g.spa()
    injected = [(base + i * 8192, 512) for i in range(n)]
    for address, length in injected:
        inject_error(g.root, address, length)
    return g, injected


def test_overflow_returns_a_full_reply_with_interrupted_status_and_overflow_flag() -> None:
    g, injected = overflowing_guest()
    start(g, *g.spa(), flags=0x02)
    code, parsed = status(g)
    assert (code, parsed.header.flags & 1) == (ARS_STATUS_INTERRUPTED, 1)
    assert records_of(parsed) == injected[:MAX_ARS_RECORDS]


def test_overflow_reply_is_exactly_max_ars_out_bytes() -> None:
    g, _ = overflowing_guest()
    start(g, *g.spa(), flags=0x02)
    code, output = g.call(3)
    assert 4 + len(output) == ArsStatusOutput.parse(output).header.out_length == 48 + 24 * MAX_ARS_RECORDS


def test_overflow_restart_point_is_the_first_record_left_out() -> None:
    g, injected = overflowing_guest()
    base, size = g.spa()
    start(g, base, size, flags=0x02)
    header = status(g)[1].header
    restart = injected[MAX_ARS_RECORDS][0]
    assert (header.restart_address, header.restart_length) == (restart, base + size - restart)


def test_long_scrub_stops_early_where_records_overflow() -> None:
    g, injected = overflowing_guest()
    base, _ = g.spa()
    start(g, *g.spa())
    g.clock.advance((injected[MAX_ARS_RECORDS][0] - base) / RATE)
    assert status(g)[0] == ARS_STATUS_INTERRUPTED


def test_completed_scrub_has_no_restart_range() -> None:
    g = guest()
    start(g, *g.spa(), flags=0x02)
    header = status(g)[1].header
    assert (header.restart_address, header.restart_length, header.flags) == (0, 0, 0)


def test_linux_flow_pages_every_injected_record_out_through_restarts() -> None:
    g, injected = overflowing_guest(3 * MAX_ARS_RECORDS + 5)
    for slot in (0, 1):
        assert cap(g, *g.spa(slot))[0] == 2 << 16
    short = scrub_to_completion(g, *g.spa(0), flags=0x02)
    long = scrub_to_completion(g, *g.spa(0))
    assert short == long == injected
    assert scrub_to_completion(g, *g.spa(1)) == []


# Clear uncorrectable error (fn 4).


def test_clear_forgets_the_poison_and_reports_the_cleared_length() -> None:
    g = guest()
    base, _ = g.spa()
    inject_error(g.root, base, 4096)
    code, output = g.call(4, rng(base, 1024))
    assert (code, ClearErrorOutput.parse(output).cleared) == (Status.SUCCESS, 1024)
    assert list(g.root.media.poison) == [(base + 1024, 3072)]


@pytest.mark.parametrize("offset, length", [(128, 256), (0, 100), (0, 0)])
def test_misaligned_clear_is_invalid_input_and_clears_nothing(offset: int, length: int) -> None:
    g = guest()
    base, _ = g.spa()
    inject_error(g.root, base, 4096)
    assert g.call(4, rng(base + offset, length)) == (Status.INVALID_INPUT, b"")
    assert list(g.root.media.poison) == [(base, 4096)]


def test_clear_outside_the_guest_spa_is_invalid_input() -> None:
    assert guest().call(4, rng(0x100000, 4096)) == (Status.INVALID_INPUT, b"")


# Translate SPA (fn 5).


def test_translate_spa_names_the_dimm_and_its_dpa() -> None:
    g = guest()
    base, size = g.spa(1)
    code, output = g.call(5, Int64ul.build(base + 0x1234))
    parsed = TranslateSpaOutput.parse(output)
    assert code == Status.SUCCESS
    assert [(d.handle, d.dpa) for d in parsed.devices] == [(slot_to_handle(1), 0x1234)]
    assert parsed.translate_length == size - 0x1234


def test_translate_spa_outside_every_dimm_is_status_2() -> None:
    g = guest()
    assert g.call(5, Int64ul.build(0x100000)) == (Status.NO_SUCH_DEVICE, b"")


def test_a_map_failed_dimm_holds_no_spa() -> None:
    config = from_mapping({"domid": 1, "nvdimm": [
        {"backing": "nv0.img", "size": PMEM, "flags": ["map-failed"]}, {"backing": "nv1.img", "size": PMEM},
    ]}, base_dir=Path("/nonexistent"))
    g = Guest(build_dispatcher(config, {}).dispatcher, FakeClock(), config)
    base, _ = g.spa(0)
    assert g.call(5, Int64ul.build(base + 0x1234)) == (Status.NO_SUCH_DEVICE, b"")


# The trio scrubber runner.


async def test_scrubber_reports_each_scrub_when_it_completes(autojump_clock: trio.testing.MockClock) -> None:
    """`autojump_clock` is pytest-trio's MockClock(autojump_threshold=0): the sweep takes no real time."""
    config = two_dimm_config()
    media = MediaErrors.create(rate=RATE, now=trio.current_time)
    dispatcher = build_dispatcher(config, {}, media=media).dispatcher
    send, receive = trio.open_memory_channel[ScrubCompleted](10)
    base, size = config.nvdimms[0].address, config.nvdimms[0].pmem_size
    inject_error(dispatcher.target(ROOT).device, base, 512)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_scrubber, media, send)
        started = trio.current_time()
        dispatcher.dispatch(encode_request(ROOT, 1, 2, start_input(base, size)))
        event = await receive.receive()
        assert trio.current_time() - started == PMEM / RATE
        nursery.cancel_scope.cancel()
    assert (event.address, event.length, event.records, event.overflowed) == (base, size, 1, False)


async def test_scrubber_settles_the_scrub_before_the_guest_asks(autojump_clock: trio.testing.MockClock) -> None:
    config = two_dimm_config()
    media = MediaErrors.create(rate=RATE, now=trio.current_time)
    dispatcher = build_dispatcher(config, {}, media=media).dispatcher
    send, receive = trio.open_memory_channel[ScrubCompleted](10)
    base, size = config.nvdimms[0].address, config.nvdimms[0].pmem_size
    async with trio.open_nursery() as nursery:
        await nursery.start(run_scrubber, media, send)
        dispatcher.dispatch(encode_request(ROOT, 1, 2, start_input(base, size)))
        await receive.receive()
        nursery.cancel_scope.cancel()
    assert media.ars.current is not None and media.ars.current.result is not None


async def test_scrubber_unregisters_its_listener_when_cancelled() -> None:
    media = MediaErrors.create()
    send, _ = trio.open_memory_channel[ScrubCompleted](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_scrubber, media, send)
        assert len(media.scrub_listeners) == 1
        nursery.cancel_scope.cancel()
    assert media.scrub_listeners == []
