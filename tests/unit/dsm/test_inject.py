"""Error injection (root fns 7-9) and the operator's API; malformed input to every media and health function."""

from __future__ import annotations

import pytest
import structlog
from construct import Int32ul, Int64ul
from hypothesis import given, settings
from hypothesis import strategies as st

from acpi.dsm_buffer import PAGE_SIZE
from pmemd.dsm.call import Status
from pmemd.dsm.inject import add_host_poison, clear_injected_error, inject_error
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.notify import drain_notifies
from pmemd.dsm.page import encode_request
from pmemd.dsm.poison import PoisonLimitError
from pmemd.dsm.root_layouts import ARS_START_BUSY, MAX_INJECT_RECORDS, InjectStatusOutput
from tests.harness.dsm import ROOT, Guest, guest, inject_input, rng, scrub_to_completion

DIMM = 1


def inject_status(g: Guest) -> list[tuple[int, int]]:
    code, output = g.call(9)
    assert code == Status.SUCCESS
    parsed = InjectStatusOutput.parse(output)
    assert parsed.count == len(parsed.records)
    return [(r.address, r.length) for r in parsed.records]


# The guest's round trip.


def test_injection_round_trip_through_ars_clear_and_inject_clear() -> None:
    g = guest()
    base, size = g.spa()
    error = (base + 0x10000, 256)
    assert g.call(7, inject_input(*error)) == (Status.SUCCESS, b"")
    assert inject_status(g) == [error]
    assert scrub_to_completion(g, base, size) == [error]
    assert g.call(4, rng(*error))[0] == Status.SUCCESS
    assert scrub_to_completion(g, base, size) == []
    assert inject_status(g) == [error]
    assert g.call(8, rng(*error)) == (Status.SUCCESS, b"")
    assert inject_status(g) == []


def test_injection_makes_poison_the_next_scrub_reports() -> None:
    g = guest()
    base, size = g.spa(1)
    g.call(7, inject_input(base, 512))
    assert scrub_to_completion(g, base, size, flags=0x02) == [(base, 512)]


def test_inject_notify_option_queues_one_root_notify_0x81() -> None:
    g = guest()
    base, _ = g.spa()
    for i in range(3):
        g.call(7, inject_input(base + i * 4096, 256, options=1))
    assert drain_notifies(g.root.pending_notifies) == [0x81]


def test_inject_without_notify_option_queues_nothing() -> None:
    g = guest()
    g.call(7, inject_input(g.spa()[0], 256))
    assert list(g.root.pending_notifies) == []


def test_inject_with_reserved_options_is_invalid_input() -> None:
    g = guest()
    assert g.call(7, inject_input(g.spa()[0], 256, options=2)) == (Status.INVALID_INPUT, b"")
    assert len(g.root.media.poison) == 0


@pytest.mark.parametrize("where", ["guest RAM", "empty"])
def test_inject_outside_the_guest_spa_is_invalid_input(where: str) -> None:
    g = guest()
    address, length = {"guest RAM": (0x100000, 256), "empty": (g.spa()[0], 0)}[where]
    assert g.call(7, inject_input(address, length)) == (Status.INVALID_INPUT, b"")


def test_inject_past_the_poison_bound_fails_and_changes_nothing() -> None:
    g = guest()
    g.root.media = MediaErrors.create(max_ranges=1)
    base, _ = g.spa()
    g.call(7, inject_input(base, 256))
    assert g.call(7, inject_input(base + 4096, 256)) == (Status.HARDWARE_ERROR, b"")
    assert (list(g.root.media.poison), inject_status(g)) == ([(base, 256)], [(base, 256)])


def test_inject_status_lists_as_many_ranges_as_fit_one_reply() -> None:
    g = guest()
    base, _ = g.spa()
    for i in range(MAX_INJECT_RECORDS + 5):
        inject_error(g.root, base + i * 1024, 256)
    assert inject_status(g) == [(base + i * 1024, 256) for i in range(MAX_INJECT_RECORDS)]


def test_inject_clear_leaves_host_poison_beside_the_injected_range() -> None:
    g = guest()
    base, _ = g.spa()
    add_host_poison(g.root, [(base, 1024)])
    g.call(7, inject_input(base + 512, 1024))
    g.call(8, rng(base, 4096))
    assert list(g.root.media.poison) == [(base, 512)]


def test_inject_clear_of_an_empty_range_is_invalid_input() -> None:
    assert guest().call(8, rng(0, 0)) == (Status.INVALID_INPUT, b"")


def test_inject_clear_where_nothing_was_injected_succeeds() -> None:
    assert guest().call(8, rng(0x100000, 4096)) == (Status.SUCCESS, b"")


# The operator's API (what QMP will call).


def test_operator_injection_is_reported_like_guest_injection() -> None:
    g = guest()
    base, size = g.spa()
    inject_error(g.root, base, 512, notify=True)
    assert (inject_status(g), list(g.root.pending_notifies)) == ([(base, 512)], [0x81])


def test_operator_injection_outside_the_guest_spa_raises() -> None:
    with pytest.raises(ValueError, match="SPA"):
        inject_error(guest().root, 0x100000, 512)


def test_operator_injection_past_the_bound_raises() -> None:
    g = guest()
    g.root.media = MediaErrors.create(max_ranges=1)
    base, _ = g.spa()
    inject_error(g.root, base, 256)
    with pytest.raises(PoisonLimitError):
        inject_error(g.root, base + 4096, 256)


def test_operator_inject_clear_forgets_the_injected_poison() -> None:
    g = guest()
    base, _ = g.spa()
    inject_error(g.root, base, 512)
    clear_injected_error(g.root, base, 512)
    assert (len(g.root.media.poison), len(g.root.media.injected)) == (0, 0)


def test_a_failing_inject_clear_restores_both_sets() -> None:
    g = guest()
    g.root.media = MediaErrors.create(max_ranges=2)
    base, _ = g.spa()
    add_host_poison(g.root, [(base, 4096)])
    inject_error(g.root, base + 1024, 256)  # inside the host range: poison stays one range
    inject_error(g.root, base + 2048, 256)
    before = (list(g.root.media.poison), list(g.root.media.injected))
    with pytest.raises(PoisonLimitError):
        clear_injected_error(g.root, base, 4096)  # would split the host range into three
    assert (list(g.root.media.poison), list(g.root.media.injected)) == before


# Malformed input, every function.

ROOT_INPUT = {1: 16, 2: 24, 3: 0, 4: 16, 5: 8, 7: 17, 8: 16, 9: 0}
DIMM_INPUT = {(1, 1): 0, (2, 1): 0, (10, 1): 1, (17, 2): 7, (18, 2): 15}
FUNCTIONS = [(ROOT, f, 1, n) for f, n in ROOT_INPUT.items()] + [(DIMM, f, r, n) for (f, r), n in DIMM_INPUT.items()]


def wrong_lengths(exact: int) -> list[int]:
    return sorted({0, exact - 1, exact + 1, exact + 8} - {exact, -1})


@pytest.mark.parametrize(
    "handle, function, revision, length",
    [(h, f, r, n) for h, f, r, exact in FUNCTIONS for n in wrong_lengths(exact)],
)
def test_input_of_the_wrong_length_is_invalid_input(handle: int, function: int, revision: int, length: int) -> None:
    g = guest()
    base, _ = g.spa()
    data = (Int64ul.build(base) + Int64ul.build(256) + bytes(32))[:length]
    assert g.call(function, data, handle=handle, revision=revision) == (Status.INVALID_INPUT, b"")


def interesting_u64(g: Guest) -> st.SearchStrategy[int]:
    base0, size0 = g.spa(0)
    base1, _ = g.spa(1)
    return st.one_of(
        st.sampled_from([0, 256, 4096, size0, base0, base0 + 256, base1, 2**64 - 1]),
        st.integers(0, 2**64 - 1),
    )


@st.composite
def call_sequences(draw: st.DrawFn) -> list[tuple[int, int, int, bytes, float]]:
    g = guest()
    calls = []
    for _ in range(draw(st.integers(1, 12))):
        handle, function, revision, exact = draw(st.sampled_from(FUNCTIONS))
        chunks = draw(st.lists(st.one_of(interesting_u64(g).map(Int64ul.build), st.binary(min_size=1, max_size=2)), max_size=4))
        data = b"".join(chunks)
        length = draw(st.one_of(st.just(exact), st.integers(0, 40)))
        data = data[:length].ljust(length, b"\0")
        calls.append((handle, function, revision, data, draw(st.sampled_from([0.0, 0.5, 10.0]))))
    return calls


ROOT_STATUSES = {0, 1, 2, 3, 4, ARS_START_BUSY}


@settings(max_examples=300, deadline=None)
@given(calls=call_sequences())
def test_random_inputs_never_make_a_handler_fail(calls: list[tuple[int, int, int, bytes, float]]) -> None:
    g = guest()
    with structlog.testing.capture_logs() as logs:
        for handle, function, revision, data, advance in calls:
            reply = g.dispatcher.dispatch(encode_request(handle, revision, function, data))
            assert Int32ul.parse(reply[:4]) == len(reply) <= PAGE_SIZE
            assert Int32ul.parse(reply[4:8]) & 0xFFFF in ROOT_STATUSES
            g.clock.advance(advance)
    assert [entry for entry in logs if entry["event"] == "dsm handler failed"] == []

