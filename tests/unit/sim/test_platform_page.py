"""The platform page's layout rules: GPEs taken once, the poison table, a reader refusing a torn table.

The page shared through the simulator is in tests/integration/sim/test_platform_page.py."""

from __future__ import annotations

import pytest

from pmemd.sim import platform_page


def fresh_page() -> memoryview:
    buf = memoryview(bytearray(platform_page.PAGE_BYTES))
    platform_page.initialise(buf)
    return buf


def test_raised_gpes_are_taken_once_and_cleared() -> None:
    buf = fresh_page()
    writer, reader = platform_page.PlatformWriter(buf), platform_page.PlatformReader(buf)
    writer.raise_gpe(4)
    writer.raise_gpe(4)
    writer.raise_gpe(7)
    assert reader.take_gpes() == [4, 7]
    assert reader.take_gpes() == []


def test_gpe_outside_the_block_is_refused() -> None:
    with pytest.raises(platform_page.PlatformPageError):
        platform_page.PlatformWriter(fresh_page()).raise_gpe(platform_page.GPE_COUNT)


def test_poison_lookup_finds_overlaps_only_and_a_rewrite_replaces_the_table() -> None:
    buf = fresh_page()
    writer, reader = platform_page.PlatformWriter(buf), platform_page.PlatformReader(buf)
    writer.set_poison([(0x1000, 0x100), (0x3000, 0x200)])
    assert reader.poisoned(0x1000, 8) == (0x1000, 0x100)
    assert reader.poisoned(0x0FF8, 8) is None  # ends where the poison starts
    assert reader.poisoned(0x10F8, 16) == (0x1000, 0x100)
    assert reader.poisoned(0x1100, 0x1F00) is None  # between the ranges
    assert reader.poisoned(0x2000, 0x1001) == (0x3000, 0x200)
    writer.set_poison([(0x3000, 0x200)])
    assert reader.ranges() == [(0x3000, 0x200)]
    assert reader.poisoned(0x1000, 8) is None


def test_reader_refuses_a_table_that_never_settles() -> None:
    buf = fresh_page()
    buf[platform_page.SEQ_OFFSET] = 1  # a writer that died mid-rewrite
    with pytest.raises(platform_page.PlatformPageError):
        platform_page.PlatformReader(buf).poisoned(0, 8)
