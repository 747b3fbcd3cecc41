"""Which of the guest's persistent-memory SPA ranges an address range lies in.

Each NVDIMM is its own, non-interleaved SPA range [address, address + pmem_size), so a range
inside one SPA range is also inside exactly one DIMM, whose handle tags ARS records.
"""

from __future__ import annotations

from collections.abc import Iterable

from pmemd.config import NvdimmConfig


def pmem_holding(nvdimms: Iterable[NvdimmConfig], address: int, length: int) -> NvdimmConfig | None:
    """The DIMM whose PMEM range holds all of [address, address + length), if any (length > 0);
    a map-failed DIMM has no SPA range, so it holds nothing."""
    if length <= 0:
        return None
    for nvdimm in nvdimms:
        if nvdimm.map_failed:  # no SPA range in the NFIT: not the guest's PMEM
            continue
        if nvdimm.address <= address and address + length <= nvdimm.end:
            return nvdimm
    return None
