"""Host bad blocks as guest poison: parse `/sys/block/<dev>/badblocks`, translate through a mapper.

The kernel prints one `"<first sector> <sector count>"` line per bad range, in 512-byte
sectors of the host block device. Which guest SPA a host byte lands on depends on how the
backing file is mapped (extents, offsets), which the storage layer knows; it is passed in as
`mapper(host_byte_offset) -> guest SPA | None`. Reading the file is the caller's job, so this
stays pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

SECTOR = 512
MAX_SECTORS_PER_LINE = 1 << 24
"""8 GiB of bad sectors in one line: far past any real list; refuses to walk absurd counts."""

HostMapper = Callable[[int], "int | None"]
"""Host byte offset on the block device → the guest SPA backed by it, or None if unmapped."""


@dataclass(frozen=True)
class BadblockImport:
    """What a host bad-block list became: guest SPA ranges, and the sectors no guest byte uses."""

    ranges: tuple[tuple[int, int], ...]  # (spa, length), coalesced where contiguous
    unmapped_sectors: int


def parse_badblocks(lines: Iterable[str]) -> Iterator[tuple[int, int]]:
    """(first sector, count) per non-blank line.

    Errors: `ValueError` naming the line for anything but two non-negative integers with a
    count in 1..`MAX_SECTORS_PER_LINE`.
    """
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise ValueError(f"badblocks line {number}: expected \"<sector> <count>\", got {line!r}")
        sector, count = int(fields[0]), int(fields[1])
        if not 1 <= count <= MAX_SECTORS_PER_LINE:
            raise ValueError(f"badblocks line {number}: count {count} is outside 1..{MAX_SECTORS_PER_LINE}")
        yield sector, count


def translate_badblocks(lines: Iterable[str], mapper: HostMapper) -> BadblockImport:
    """Guest SPA ranges for the host bad sectors in `lines`, sector by sector through `mapper`.

    Each sector is mapped on its own, because a bad range may straddle two extents that the
    guest sees far apart; consecutive sectors landing on consecutive SPAs coalesce.
    """
    ranges: list[tuple[int, int]] = []
    unmapped = 0
    for sector, count in parse_badblocks(lines):
        for s in range(sector, sector + count):
            spa = mapper(s * SECTOR)
            if spa is None:
                unmapped += 1
            elif ranges and ranges[-1][0] + ranges[-1][1] == spa:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + SECTOR)
            else:
                ranges.append((spa, SECTOR))
    return BadblockImport(tuple(ranges), unmapped)
