"""A real Linux 6.1 guest (Debian's kernel, ndctl 76) under QEMU TCG as the daemon's client.

Three boots through `pmemd lab`, shared by the assertions below: a first boot on fresh
backing files (tables, data path, health, media errors, labels through DSM 4/5/6 on the
Intel DIMM and through _LSI/_LSR/_LSW on the MSFT-family DIMM), a second boot on the same
files (namespaces survive), and a boot whose daemon stops after a few calls. Each boot's
wall time, DSM calls and handler latency are printed.

ndctl 76 gives Hyper-V-family DIMMs no label operations of its own, so the `_LSx` DIMM
uses the MSFT family: Linux finds it, sees no `_DSM` functions, and reads labels via `_LSR`.
It takes slot 0 and the Intel DIMM slot 1 (nmem1): Linux drops the Intel family from the bus
when a non-Intel DIMM registers last, and pmemd's config refuses that layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness.lab import Boot, lab_boot

pytestmark = pytest.mark.guest

LABEL_SIZE = 2 << 20
PMEM = 256 << 20
DATA_OFFSET = 64 << 20
DATA = b"PMEMD-LAB-DATA"
INJECT_BLOCK, INJECT_COUNT = 4096, 2

CONFIG = """domid = 3
[guest]
lowmem = "512M"
{dsm}
[[nvdimm]]
backing = "nv0.img"
size = "258M"
label_size = "2M"
family = "msft"
[[nvdimm]]
backing = "nv1.img"
size = "258M"
label_size = "2M"
"""

FIRST_BOOT = f"""
echo "=== list"; ndctl list -DRN
echo "=== data"; printf '{DATA.decode()}' | dd of=/dev/pmem0 bs=4096 seek={DATA_OFFSET // 4096} conv=sync 2>&1
echo "=== sysfs"; for d in 0 1; do echo "nmem$d $(cat /sys/bus/nd/devices/nmem$d/nfit/family) $(cat /sys/bus/nd/devices/nmem$d/commands)"; done
echo "=== health"; ndctl list -DH -d nmem1
ndctl inject-smart nmem1 --media-temperature=88 --unsafe-shutdown >/dev/null
echo "=== injected-health"; ndctl list -DH -d nmem1
ndctl inject-error namespace0.0 -B {INJECT_BLOCK} -n {INJECT_COUNT} >/dev/null
ndctl start-scrub ndbus0 >/dev/null; ndctl wait-scrub ndbus0 >/dev/null
echo "=== media-errors"; ndctl list -N --media-errors -n namespace0.0
ndctl clear-errors namespace0.0 >/dev/null 2>&1
echo "=== cleared"; ndctl list -N --media-errors -n namespace0.0
echo "=== read-labels"; ndctl read-labels -j nmem0 nmem1 2>&1
ndctl disable-region all >/dev/null
echo "=== init-labels"; ndctl init-labels -f all 2>&1
ndctl enable-region all >/dev/null
ndctl create-namespace -r region0 -m fsdax >/dev/null
ndctl create-namespace -r region1 -m fsdax >/dev/null
echo "=== namespaces"; ndctl list -N
echo "=== dmesg"; dmesg
"""

SECOND_BOOT = """
echo "=== namespaces"; ndctl list -N
echo "=== dmesg"; dmesg
"""

STOPPED_DAEMON_BOOT = """
echo "=== dimms"; ndctl list -D
echo "=== dmesg"; dmesg
"""


def boot(request, workdir: Path, script: str, *extra: str, dsm: str = "") -> Boot:
    return lab_boot(request, workdir, CONFIG.format(dsm=dsm), script, extra=extra, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("lab")
    for name in ("nv0.img", "nv1.img"):
        with (workdir / name).open("wb") as f:
            f.truncate(PMEM + LABEL_SIZE)
    return workdir


@pytest.fixture(scope="module")
def first_boot(request, files: Path) -> Boot:
    return boot(request, files, FIRST_BOOT)


@pytest.fixture(scope="module")
def second_boot(request, files: Path, first_boot: Boot) -> Boot:
    return boot(request, files, SECOND_BOOT)


@pytest.fixture(scope="module")
def stopped_daemon_boot(request, tmp_path_factory) -> Boot:
    workdir = tmp_path_factory.mktemp("lab-stopped")
    for name in ("nv0.img", "nv1.img"):
        with (workdir / name).open("wb") as f:
            f.truncate(PMEM + LABEL_SIZE)
    return boot(request, workdir, STOPPED_DAEMON_BOOT, "--stop-daemon-after-calls", "5",
                dsm='[dsm]\ntransport = "qemu"\ntimeout_ms = 200')


def acpi_problems(dmesg: str) -> list[str]:
    return [line for line in dmesg.splitlines()
            if re.search(r"ACPI (Error|Warning|BIOS)|AE_[A-Z_]+|failed to evaluate _DSM", line)]


# -- tables and data path ----------------------------------------------------------------


def test_guest_lists_every_configured_dimm_and_region_with_pmemd_ids(first_boot: Boot) -> None:
    assert first_boot.status == 0, first_boot.console[-3000:]
    listing = first_boot.json("list")
    assert sorted(d["handle"] for d in listing["dimms"]) == [1, 2]  # slot + 1
    assert sorted(d["id"] for d in listing["dimms"]) == ["8680-00004d50", "8680-01004d50"]  # serial 0x504D00xx
    assert sorted(r["size"] for r in listing["regions"]) == [PMEM, PMEM]


def test_guest_write_to_pmem0_lands_in_the_backing_file_at_the_same_offset(first_boot: Boot, files: Path) -> None:
    assert first_boot.status == 0
    with (files / "nv0.img").open("rb") as f:
        f.seek(DATA_OFFSET)
        assert f.read(len(DATA)) == DATA


def test_first_boot_logs_no_acpi_error_or_warning(first_boot: Boot) -> None:
    assert acpi_problems(first_boot.section("dmesg")) == []


def test_each_dimm_gets_its_configured_family(first_boot: Boot) -> None:
    lines = first_boot.section("sysfs").split("\n")
    assert lines[0].split()[:2] == ["nmem0", "3"]  # MSFT: family found, labels only through _LSx
    assert "smart" not in lines[0] and {"get_size", "get_data", "set_data"} <= set(lines[0].split())
    assert lines[1].startswith("nmem1 0 ") and "smart" in lines[1]  # Intel: DSMs for labels and SMART


# -- health and media errors ----------------------------------------------------------------


def test_health_reports_pmemd_values_then_the_injected_condition(first_boot: Boot) -> None:
    before = first_boot.json("health")[0]["health"]
    after = first_boot.json("injected-health")[0]["health"]
    assert before["health_state"] == "ok"
    assert after["temperature_celsius"] == 88 and after["shutdown_state"] == "dirty"


def test_scrub_reports_exactly_the_injected_blocks_and_clear_errors_removes_them(first_boot: Boot) -> None:
    namespace = first_boot.json("media-errors")[0]
    assert namespace["badblock_count"] == INJECT_COUNT
    assert [(b["offset"], b["length"]) for b in namespace["badblocks"]] == [(INJECT_BLOCK, INJECT_COUNT)]
    assert "badblocks" not in first_boot.json("cleared")[0]


# -- labels ----------------------------------------------------------------------------------


def test_labels_initialise_on_both_families_and_namespaces_are_created(first_boot: Boot) -> None:
    assert "initialized 2 nmems" in first_boot.section("init-labels")
    namespaces = first_boot.json("namespaces")
    assert sorted(n["mode"] for n in namespaces) == ["fsdax", "fsdax"]
    assert all(n["uuid"] for n in namespaces)


def test_lsx_dimm_labels_reach_its_backing_file(first_boot: Boot, files: Path) -> None:
    assert first_boot.status == 0
    with (files / "nv0.img").open("rb") as f:
        f.seek(PMEM)
        index = f.read(16)
    assert index.startswith(b"NAMESPACE_INDEX\0")


def test_second_boot_keeps_both_namespaces_with_the_same_uuids(first_boot: Boot, second_boot: Boot) -> None:
    assert second_boot.status == 0, second_boot.console[-3000:]
    uuids = lambda b: sorted(n["uuid"] for n in b.json("namespaces"))
    assert uuids(second_boot) == uuids(first_boot)
    assert acpi_problems(second_boot.section("dmesg")) == []


# -- a device model that stops answering ------------------------------------------------------


def test_guest_boots_with_the_daemon_stopped_mid_boot(stopped_daemon_boot: Boot) -> None:
    assert stopped_daemon_boot.status == 0, stopped_daemon_boot.console[-3000:]
    assert stopped_daemon_boot.summary["dsm_calls"] == 5
    dmesg = stopped_daemon_boot.section("dmesg")
    assert not re.search(r"AE_AML_|Aborting method", dmesg)
