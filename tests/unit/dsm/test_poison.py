"""The poison set's rules (coalesced, bounded), its saved form, and host bad blocks as poison."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmemd.daemon.state_file import load_state_file
from pmemd.dsm.guest_state import guest_state_bytes, restore_guest_state, state_file_bytes
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.poison import PoisonBodyV1, PoisonLimitError, PoisonSet
from pmemd.dsm.state_blob import StateFormatError, wrap
from tests.harness.dsm import guest


def poison(*ranges: tuple[int, int], max_ranges: int = 1 << 18) -> PoisonSet:
    p = PoisonSet(max_ranges)
    for start, length in ranges:
        p.add(start, length)
    return p


# Interval rules.


def test_overlapping_ranges_merge() -> None:
    assert list(poison((0, 100), (50, 100))) == [(0, 150)]


def test_adjacent_ranges_merge() -> None:
    assert list(poison((0, 100), (100, 100))) == [(0, 200)]


def test_disjoint_ranges_stay_sorted() -> None:
    assert list(poison((1000, 10), (0, 10), (500, 10))) == [(0, 10), (500, 10), (1000, 10)]


def test_a_range_bridging_several_merges_them_all() -> None:
    assert list(poison((0, 10), (20, 10), (40, 10), (5, 40))) == [(0, 50)]


def test_removing_the_middle_splits_a_range() -> None:
    p = poison((0, 300))
    p.remove(100, 100)
    assert list(p) == [(0, 100), (200, 100)]


def test_removing_across_ranges_trims_both_ends() -> None:
    p = poison((0, 100), (200, 100), (400, 100))
    p.remove(50, 400)
    assert list(p) == [(0, 50), (450, 50)]


def test_removing_unpoisoned_bytes_changes_nothing() -> None:
    p = poison((0, 100))
    p.remove(100, 100)
    assert list(p) == [(0, 100)]


@pytest.mark.parametrize("start, length", [(0, 0), (-1, 10), (2**64 - 1, 2)])
def test_empty_or_out_of_u64_ranges_are_rejected(start: int, length: int) -> None:
    with pytest.raises(ValueError):
        PoisonSet().add(start, length)


def test_adding_past_the_bound_raises_and_changes_nothing() -> None:
    p = poison((0, 10), (100, 10), max_ranges=2)
    with pytest.raises(PoisonLimitError):
        p.add(200, 10)
    assert list(p) == [(0, 10), (100, 10)]


def test_adding_a_merging_range_at_the_bound_is_allowed() -> None:
    p = poison((0, 10), (100, 10), max_ranges=2)
    p.add(5, 100)
    assert list(p) == [(0, 110)]


def test_a_split_past_the_bound_raises_and_clears_nothing() -> None:
    p = poison((0, 300), max_ranges=1)
    with pytest.raises(PoisonLimitError):
        p.remove(100, 100)
    assert list(p) == [(0, 300)]


def test_overlapping_clips_to_the_window_and_honours_the_limit() -> None:
    p = poison((0, 100), (200, 100), (400, 100))
    assert p.overlapping(50, 450) == [(50, 50), (200, 100), (400, 50)]
    assert p.overlapping(50, 450, limit=2) == [(50, 50), (200, 100)]


def test_nth_start_finds_where_the_nth_range_in_a_window_begins() -> None:
    p = poison((0, 100), (200, 100), (400, 100))
    assert [p.nth_start(50, 1000, n) for n in range(4)] == [50, 200, 400, None]


def test_covers_reports_single_poisoned_bytes() -> None:
    p = poison((100, 10))
    assert [p.covers(a) for a in (99, 100, 109, 110)] == [False, True, True, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.integers(1, 50)), max_size=40))
def test_the_set_matches_a_byte_model_and_stays_canonical(ops: list[tuple[bool, int, int]]) -> None:
    p = PoisonSet()
    model: set[int] = set()
    for add, start, length in ops:
        (p.add if add else p.remove)(start, length)
        (model.update if add else model.difference_update)(range(start, start + length))
    assert {a for s, n in p for a in range(s, s + n)} == model
    ranges = list(p)
    assert all(s1 + n1 < s2 for (s1, n1), (s2, _) in zip(ranges, ranges[1:]))


# Saved form.


def test_poison_round_trips_through_bytes() -> None:
    p = poison((0, 100), (2**63, 512), (2**64 - 512, 512))
    assert PoisonSet.from_bytes(p.to_bytes()) == p


def test_empty_poison_round_trips_through_bytes() -> None:
    assert len(PoisonSet.from_bytes(PoisonSet().to_bytes())) == 0


def test_a_corrupted_blob_is_refused() -> None:
    blob = bytearray(poison((0, 100)).to_bytes())
    blob[20] ^= 0x01
    with pytest.raises(StateFormatError, match="not a valid"):
        PoisonSet.from_bytes(bytes(blob))


def test_a_truncated_blob_is_refused() -> None:
    with pytest.raises(StateFormatError):
        PoisonSet.from_bytes(poison((0, 100)).to_bytes()[:-1])


def test_a_newer_version_blob_is_refused() -> None:
    blob = wrap(b"POIS", 2, PoisonBodyV1.build({"count": 0, "bounds": []}))
    with pytest.raises(StateFormatError, match="version 2"):
        PoisonSet.from_bytes(blob)


def test_a_blob_of_another_kind_is_refused() -> None:
    with pytest.raises(StateFormatError, match="HLTH"):
        PoisonSet.from_bytes(wrap(b"HLTH", 1, b""))


@pytest.mark.parametrize("bounds", [[100, 10, 0, 10], [0, 10, 5, 10], [0, 10, 10, 10], [0, 0]])
def test_a_blob_with_non_canonical_ranges_is_refused(bounds: list[int]) -> None:
    blob = wrap(b"POIS", 1, PoisonBodyV1.build({"count": len(bounds) // 2, "bounds": bounds}))
    with pytest.raises(StateFormatError):
        PoisonSet.from_bytes(blob)


def test_a_blob_over_the_bound_is_refused() -> None:
    with pytest.raises(StateFormatError, match="bound"):
        PoisonSet.from_bytes(poison((0, 1), (10, 1)).to_bytes(), max_ranges=1)


def test_media_state_round_trips_poison_and_injected_ranges() -> None:
    g = guest()
    base, _ = g.spa()
    g.root.media.poison.add(base, 512)
    g.root.media.injected.add(base, 256)
    restored = MediaErrors.create()
    restored.restore(g.root.media.to_bytes())
    assert (restored.poison, restored.injected) == (g.root.media.poison, g.root.media.injected)


def test_guest_state_round_trips_media_and_health() -> None:
    g = guest()
    base, _ = g.spa()
    g.root.media.poison.add(base, 512)
    dimm = g.dispatcher.target(1).device
    dimm.health.dirty_shutdown()
    blob = guest_state_bytes(g.root, [dimm])

    fresh = guest()
    fresh_dimm = fresh.dispatcher.target(1).device
    restore_guest_state(blob, fresh.root, [fresh_dimm])
    assert list(fresh.root.media.poison) == [(base, 512)]
    assert fresh_dimm.health == dimm.health


def test_a_state_file_restores_the_devices_and_its_running_marker(tmp_path: Path) -> None:
    g = guest()
    base, _ = g.spa()
    g.root.media.poison.add(base, 512)
    dimm = g.dispatcher.target(1).device
    (tmp_path / "state").write_bytes(state_file_bytes(g.root, [dimm], running=True))

    fresh = guest()
    saved = load_state_file(tmp_path / "state", fresh.root, [fresh.dispatcher.target(1).device])
    assert saved is not None and saved.running
    assert list(fresh.root.media.poison) == [(base, 512)]


def test_a_missing_state_file_restores_nothing(tmp_path: Path) -> None:
    g = guest()
    assert load_state_file(tmp_path / "absent", g.root, []) is None
