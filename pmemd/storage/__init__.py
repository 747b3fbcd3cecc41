"""Backing storage for vNVDIMMs: from a file on host pmem to populate calls for its frames.

Modules: `host` (the host pmem region and its reserved area), `pfn` (the pfn/dax info
block), `fiemap` (the ioctl ABI), `extents` (extent streams and their rules), `mapping`
(extents to coalesced frame runs to the hypervisor sink), `layout` (fingerprints),
`lock` (one holder per file), `prepare` (the explicit `pmemd prepare` step), `errors`.
"""

from .errors import (
    BackingRefused,
    FrameRefused,
    HostPmemError,
    LayoutMoved,
    LockHeld,
    PfnInfoError,
    StorageError,
)
from .extents import ExtentSource, FileExtents, validated
from .fiemap import Extent, ExtentFlag
from .host import HostPmem, discover
from .layout import layout_fingerprint, record_layout, recorded_layout, verify_layout
from .lock import BackingLock
from .mapping import (
    MapReport,
    Placement,
    PopulateSink,
    Run,
    frame_runs,
    map_nvdimm,
    populate_backing,
)
from .pfn import PfnInfo, build_pfn_info, parse_pfn_info, read_pfn_info
from .prepare import PrepareReport, prepare, prepare_backing

__all__ = [
    "BackingLock", "BackingRefused", "Extent", "ExtentFlag", "ExtentSource", "FileExtents",
    "FrameRefused", "HostPmem", "HostPmemError", "LayoutMoved", "LockHeld", "MapReport",
    "PfnInfo", "PfnInfoError", "Placement", "PopulateSink", "PrepareReport", "Run",
    "StorageError", "build_pfn_info", "discover", "frame_runs", "layout_fingerprint",
    "map_nvdimm", "parse_pfn_info", "populate_backing", "prepare", "prepare_backing",
    "read_pfn_info", "record_layout", "recorded_layout", "validated", "verify_layout",
]
