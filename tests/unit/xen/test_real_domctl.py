"""The real-Xen backend's decoding of libxenctrl's domain info and e820 map (Xen 4.17 layouts)."""

from __future__ import annotations

import struct

from pmemd.xen.real import domctl

MiB = 1 << 20


def getdomaininfo(domid: int, flags: int, max_pages: int = 65536, max_vcpu_id: int = 1) -> bytes:
    head = struct.pack("<H2xIQQQQQQQII", domid, flags, 1000, max_pages, 0, 0, 0, 0, 0, 2, max_vcpu_id)
    return head + bytes(domctl.GETDOMAININFO_BUFFER - len(head))


def test_getdomaininfo_fields_are_read_at_their_offsets() -> None:
    raw = domctl.parse_getdomaininfo(getdomaininfo(7, domctl.DOMINF_HVM, max_pages=4242, max_vcpu_id=3))
    assert (raw.domid, raw.hvm, raw.max_pages, raw.max_vcpu_id) == (7, True, 4242, 3)


def test_a_dying_domain_counts_as_destroyed() -> None:
    raw = domctl.parse_getdomaininfo(getdomaininfo(7, domctl.DOMINF_HVM | domctl.DOMINF_DYING))
    assert raw.state == "destroyed"


def test_a_crash_shutdown_is_crashed_and_others_shutdown() -> None:
    crash = domctl.DOMINF_SHUTDOWN | (domctl.SHUTDOWN_CRASH << domctl.DOMINF_SHUTDOWN_SHIFT)
    poweroff = domctl.DOMINF_SHUTDOWN
    assert domctl.parse_getdomaininfo(getdomaininfo(7, crash)).state == "crashed"
    assert domctl.parse_getdomaininfo(getdomaininfo(7, poweroff)).state == "shutdown"
    assert domctl.parse_getdomaininfo(getdomaininfo(7, poweroff)).shutdown_reason == 0


def test_paused_and_running() -> None:
    assert domctl.parse_getdomaininfo(getdomaininfo(7, domctl.DOMINF_PAUSED)).state == "paused"
    assert domctl.parse_getdomaininfo(getdomaininfo(7, 0)).state == "running"


def test_libxl_ram_is_static_max_less_videoram_split_at_the_mmio_hole() -> None:
    assert domctl.libxl_ram(256 * 1024, 0) == (256 * MiB, 0)
    assert domctl.libxl_ram(4 * 1024 * 1024 + 16 * 1024, 16 * 1024) == (0xF0000000, (4 << 30) - 0xF0000000)


def test_domain_info_reports_vcpus_from_the_highest_vcpu_id() -> None:
    raw = domctl.parse_getdomaininfo(getdomaininfo(5, domctl.DOMINF_HVM | domctl.DOMINF_PAUSED, max_vcpu_id=1))
    info = domctl.domain_info(raw, 256 * MiB, 0)
    assert (info.domid, info.state, info.vcpus, info.lowmem, info.highmem) == (5, "paused", 2, 256 * MiB, 0)
