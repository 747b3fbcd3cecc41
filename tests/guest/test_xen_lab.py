"""pmemd on real Xen 4.17 (Debian, unpatched), nested in QEMU TCG, serving a Linux guest.

One `pmemd lab --xen` run boots two guest domains on the same backing files: the first with the
DSM page as a frame pmemd populates (`ram`, the default), the second, after the first domain is
destroyed, with the page as trapped MMIO (`mmio`), where namespaces and data must still be. pmemd runs in dom0 as the guest's device model through upstream
interfaces only: an ioreq server, tables through xl's `acpi_firmware=`, mirrored PMEM written
back on every flush-hint write. Midway the kill drill runs: dom0 SIGKILLs pmemd and runs
`pmemd release` (the unit's ExecStopPost) while the guest makes a `_DSM` call, which must end
with a status, then starts pmemd again, which adopts the guest's ioreq servers and mirrored PMEM
while the guest keeps running. The guest's console is slow (each
serial byte traps to QEMU-xen), so the script prints only what is asserted on and filters dmesg
in the guest. Each guest times 2000 reads of pmemd's notify port against 2000 PCI config reads
forwarded to QEMU-xen; the ratio is printed (bench/xen_trap.py gives its median over runs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.harness.lab import XEN_GUEST_CONFIG, XenRun, require_xen_lab, show, xen_lab_run

BOOT_TIMEOUT = 480  # one Linux boot under nested TCG: 2-3 min on an idle 2-core host
pytestmark = [pytest.mark.guest, pytest.mark.xen, pytest.mark.timeout(2 * (2 * BOOT_TIMEOUT + 180 + 300))]

PMEM = 32 << 20
LABEL_SIZE = 2 << 20
PATTERN = "PMEMD-XEN-PATTERN"
AFTER = "PMEMD-XEN-AFTER-RESTART"
LABEL_HEAD = 16384  # both index blocks and the first labels: 4 label-read calls, not 512 for all 2 MiB
SEEK_BLOCKS = 1024  # the first pattern goes 4 MiB into /dev/pmem0, the second 4 KiB further

# {pattern} at block {block} of $dev, flushed (fsync: a flush-hint write), then checked by dom0
# in the backing file at once.
FLUSHED = """printf '{pattern}' | dd of=/dev/$dev bs=4096 seek={block} conv=sync,fsync 2>/dev/null
spa=$(( $(cat /sys/block/$dev/device/resource) + {block} * 4096 ))
echo "pmemd-lab: check-backing $spa $(printf '{pattern}' | od -A n -t x1 | tr -d ' \\n')"
"""

TRAP_COST = """a=$(cut -d' ' -f1 /proc/uptime); trap-notify; b=$(cut -d' ' -f1 /proc/uptime); trap-pcicfg; c=$(cut -d' ' -f1 /proc/uptime)
echo "=== trap-cost"; echo "$a $b $c" | awk '{printf "pmemd_us %.1f qemu_us %.1f\\n", ($2-$1)*1e6/2000, ($3-$2)*1e6/2000}'
"""
# The kernel's complaints about the call made while pmemd is dead (lines dead_from+1..dead_to) are
# that call's own, shown in its section; every other line counts.
ACPI_PROBLEMS = """echo "=== acpi-problems"
dmesg | awk -v a="${dead_from:-0}" -v b="${dead_to:-0}" 'NR <= a || NR > b' | grep -E "ACPI (Error|Warning|BIOS Error)|nfit.*(fail|error)"
echo "=== end"
"""

# Guest 1 (ram page): tables, labels, a namespace, flushed data, media errors, the kill drill.
FIRST = f"""
echo "=== list"; ndctl list -DRN
echo "=== read-labels"; ndctl read-labels -j nmem1 2>&1
ndctl disable-region all >/dev/null
echo "=== init-labels"; ndctl init-labels -f all 2>&1
ndctl enable-region all >/dev/null
ndctl create-namespace -r region0 -m fsdax >/dev/null 2>&1
ndctl create-namespace -r region1 -m fsdax >/dev/null 2>&1
echo "=== namespaces"; ndctl list -N
dev=$(ndctl list -N -r region0 | sed -n 's/.*"blockdev":"\\([^"]*\\)".*/\\1/p')
{FLUSHED.format(pattern=PATTERN, block=SEEK_BLOCKS)}
ns=$(ndctl list -N -r region0 | sed -n 's/.*"dev":"\\(namespace[^"]*\\)".*/\\1/p')
ndctl inject-error $ns -B 4096 -n 2 >/dev/null 2>&1
ndctl start-scrub >/dev/null 2>&1; ndctl wait-scrub >/dev/null 2>&1
echo "=== media-errors"; ndctl list -N --media-errors -n $ns
ndctl read-labels nmem1 -s {LABEL_HEAD} -o /tmp/labels-before 2>/dev/null
echo "pmemd-lab: kill-daemon"
sleep 5  # dom0 reads the console once a second: pmemd is dead by now, maybe not yet released
dead_from=$(dmesg | wc -l)
echo "=== dead-call"; ndctl read-labels nmem1 -s 4096 -o /tmp/labels-dead 2>&1; echo "exit $?"
dead_to=$(dmesg | wc -l); dmesg | tail -n +$((dead_from + 1))
echo "pmemd-lab: restart-daemon"
sleep 10  # pmemd is back by now, maybe still starting
tries=1; until ndctl read-labels nmem1 -s {LABEL_HEAD} -o /tmp/labels-after 2>/dev/null && cmp -s /tmp/labels-before /tmp/labels-after; do
  [ $tries -ge 90 ] && break; tries=$((tries + 1)); sleep 2
done
echo "=== drill"; cmp -s /tmp/labels-before /tmp/labels-after && echo "labels-unchanged after $tries tries" || echo "labels-differ after $tries tries"
echo "=== namespaces-after"; ndctl list -N
echo "=== pattern-after"; dd if=/dev/$dev bs=4096 skip={SEEK_BLOCKS} count=1 2>/dev/null | head -c {len(PATTERN)}; echo
{FLUSHED.format(pattern=AFTER, block=SEEK_BLOCKS + 1)}
{TRAP_COST}{ACPI_PROBLEMS}"""

# Guest 2 (mmio page, a new domain on the same files): namespaces and both patterns survive.
SECOND = f"""
echo "=== namespaces"; ndctl list -N
dev=$(ndctl list -N -r region0 | sed -n 's/.*"blockdev":"\\([^"]*\\)".*/\\1/p')
echo "=== patterns"; dd if=/dev/$dev bs=4096 skip={SEEK_BLOCKS} count=2 2>/dev/null | tr -d '\\000'; echo
{TRAP_COST}{ACPI_PROBLEMS}"""


def one_run(request, tmp_path_factory) -> tuple[XenRun, Path]:
    work = tmp_path_factory.mktemp("xenlab")
    for name in ("nv0.img", "nv1.img"):
        with (work / name).open("wb") as f:
            f.truncate(PMEM + LABEL_SIZE)
    (work / "lab.toml").write_text(XEN_GUEST_CONFIG)
    (work / "first.sh").write_text(FIRST)
    (work / "second.sh").write_text(SECOND)
    run = xen_lab_run(request, work, "xen lab", ["--dsm-modes", "ram,mmio", "--again", str(work / "second.sh"),
                                                 str(work / "first.sh")], boots=2, boot_timeout=BOOT_TIMEOUT)
    return run, work


def guest_triple_fault(work: Path) -> str:
    """Xen's line for a guest that triple-faulted in this run, or ""."""
    dmesg = work / "out" / "xl-dmesg.log"
    lines = dmesg.read_text(errors="replace").splitlines() if dmesg.exists() else []
    return next((line for line in lines if "Triple fault" in line), "")


@pytest.fixture(scope="module")
def xen_run(request, tmp_path_factory) -> XenRun:
    require_xen_lab("ndctl")
    run, work = one_run(request, tmp_path_factory)
    if triple_fault := guest_triple_fault(work):
        # Seen once in seven runs (first guest, mid `read-labels`, pmemd's log clean): a nested-TCG
        # guest crash not yet explained. It is shown, and the whole run is made once more, anew.
        show(request, [f"[xen lab] a guest triple-faulted; one more run: {triple_fault}"])
        run, work = one_run(request, tmp_path_factory)
    lines = []
    for boot, mode in enumerate(("ram", "mmio")):
        cost = dict(re.findall(r"(\w+_us) ([\d.]+)", run.consoles[boot]))
        if {"pmemd_us", "qemu_us"} <= cost.keys() and float(cost["qemu_us"]) > 0:
            pmemd, qemu = float(cost["pmemd_us"]), float(cost["qemu_us"])
            lines.append(f"[xen lab] {mode} guest trap round trip: pmemd {pmemd} µs, QEMU-xen {qemu} µs "
                         f"({pmemd / qemu:.2f}x; target <= 1.5x)")
    show(request, lines)
    return run


def test_both_guests_run_their_scripts_to_the_end(xen_run: XenRun) -> None:
    assert [r.get("status") for r in xen_run.results] == [0, 0], (xen_run.results, xen_run.stderr[-3000:])


def test_ndctl_lists_every_dimm_and_region(xen_run: XenRun) -> None:
    listing = xen_run.json(0, "list")
    assert len(listing["dimms"]) == 2
    assert len(listing["regions"]) == 2


def test_no_acpi_error_or_warning_in_either_guest(xen_run: XenRun) -> None:
    for boot in (0, 1):
        assert xen_run.section(boot, "acpi-problems").strip() == ""


def test_dsm_calls_are_served_in_both_page_modes_with_one_trap_a_call_in_ram_mode(xen_run: XenRun) -> None:
    ram, mmio = xen_run.summary["boots"]
    assert ram["mode"] == "ram" and ram["dsm_calls"] > 0 and ram["traps_per_call"] == 1.0
    assert mmio["mode"] == "mmio" and mmio["dsm_calls"] > 0 and mmio["traps_per_call"] > 1


def test_flushed_patterns_are_in_the_backing_file_while_the_guest_runs(xen_run: XenRun) -> None:
    checks = xen_run.results[0].get("checks", [])
    assert len(checks) == 2 and all(c["ok"] for c in checks), checks


def test_injected_media_errors_are_found_by_a_scrub(xen_run: XenRun) -> None:
    listing = xen_run.json(0, "media-errors")
    namespace = listing[0] if isinstance(listing, list) else listing
    assert namespace.get("badblock_count", 0) >= 2, listing


def test_kill_drill_releases_and_restarts_pmemd(xen_run: XenRun) -> None:
    result = xen_run.results[0]
    assert '"disabled_ioreq_servers"' in result.get("release", ""), result
    assert result.get("restarted") is True, result
    assert xen_run.summary["boots"][0]["daemon_starts"] == 2


def test_a_dsm_call_while_pmemd_is_dead_fails_with_a_status_and_the_guest_goes_on(xen_run: XenRun) -> None:
    dead = xen_run.section(0, "dead-call")
    assert re.search(r"^exit [1-9]", dead, re.M), dead  # ndctl saw the label read fail, and went on
    release = json.loads(next(line for line in xen_run.results[0]["release"].splitlines() if line.startswith("{")))
    assert release["completed_requests"]["dsm"] in (0, 1), release  # 1: the call was caught before the release
    assert xen_run.section(0, "drill").startswith("labels-unchanged")


def test_the_restarted_pmemd_adopts_the_ioreq_servers_and_the_mirrored_pmem(xen_run: XenRun) -> None:
    enabled = xen_run.events(0, "ioreq server enabled")
    mirrored = xen_run.events(0, "pmem mirrored")
    assert [e["adopted"] for e in enabled] == [False, False, True, True]
    assert [e["adopted"] for e in mirrored] == [False, False, True, True]


def test_labels_namespaces_and_data_are_unchanged_after_the_drill(xen_run: XenRun) -> None:
    assert xen_run.section(0, "drill").startswith("labels-unchanged"), xen_run.section(0, "drill")
    before = {n["dev"] for n in xen_run.json(0, "namespaces")}
    assert before and before == {n["dev"] for n in xen_run.json(0, "namespaces-after")}
    assert PATTERN in xen_run.section(0, "pattern-after")


def test_namespaces_and_data_survive_a_destroyed_and_recreated_domain(xen_run: XenRun) -> None:
    first = {n["dev"] for n in xen_run.json(0, "namespaces")}
    assert first and first == {n["dev"] for n in xen_run.json(1, "namespaces")}
    patterns = xen_run.section(1, "patterns")
    assert PATTERN in patterns and AFTER in patterns


def test_the_trap_cost_against_qemu_xen_is_measured_in_both_guests(xen_run: XenRun) -> None:
    for boot in (0, 1):
        cost = dict(re.findall(r"(\w+_us) ([\d.]+)", xen_run.section(boot, "trap-cost")))
        assert float(cost["pmemd_us"]) > 0 and float(cost["qemu_us"]) > 0  # a figure, printed, not a bound
