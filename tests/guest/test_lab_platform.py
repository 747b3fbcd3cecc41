"""The driver developer's platform in a real Linux 6.1 guest (ndctl 76): firmware update and
activation, configured NFIT memdev flags, and health for every `_DSM` family — one boot.

Five DIMMs: MSFT (slot 0), Hyper-V (1), HPE1 with every failure flag but map-failed (2), an
Intel DIMM configured map-failed (3), and the Intel DIMM whose firmware is updated (4, the
highest slot, as the config requires). Before the boot the test writes the guest state file
with a different health per family, so `ndctl list -DH` proves each family reads the shared
health model; the firmware image comes from `pmemd firmware-image` on the host.

The boot takes the developer's path: `--kernel` and `--modules` name a kernel and its
`modules_install` tree (Debian's, from the lab cache, standing in for one built by hand) and
`--append nfit.dyndbg=+p` makes the kernel log every DSM it sends.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pmemd.config import load
from pmemd.daemon.firmware_file import firmware_file_path
from pmemd.daemon.state_file import state_file_path
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.firmware import INITIAL_VERSION, parse_firmware_file
from pmemd.dsm.guest_state import state_file_bytes
from pmemd.dsm.health import HEALTH_CRITICAL, HEALTH_FATAL, HEALTH_NON_CRITICAL, encode_temperature
from pmemd.lab.image import cache_dir, prepare
from tests.harness.lab import Boot, require_qemu

pytestmark = [pytest.mark.guest, pytest.mark.timeout(200)]  # the first test waits for the boot

NEW_VERSION = 0x2_0000_0005
FLAGGED = ["save-fail", "restore-fail", "flush-fail", "not-armed", "health-observed"]

CONFIG = f"""domid = 4
[guest]
lowmem = "512M"
[[nvdimm]]
backing = "nv0.img"
size = "32M"
family = "msft"
[[nvdimm]]
backing = "nv1.img"
size = "32M"
family = "hyperv"
[[nvdimm]]
backing = "nv2.img"
size = "32M"
family = "hpe1"
flags = {FLAGGED!r}
[[nvdimm]]
backing = "nv3.img"
size = "32M"
flags = ["map-failed"]
[[nvdimm]]
backing = "nv4.img"
size = "32M"
""".replace("'", '"')

# Prints "nmemN <handle> [<flags>]" and finds the Intel DIMM in slot 4 (NFIT handle 5) by handle.
SCRIPT = """
echo "=== flags"; for d in /sys/bus/nd/devices/nmem*; do echo "$(basename $d) $(cat $d/nfit/handle) [$(cat $d/nfit/flags)]"; done
echo "=== regions"; for r in /sys/bus/nd/devices/region*; do echo "$(basename $r) $(cat $r/mapping0) ro=$(cat $r/read_only)"; done
echo "=== health"; ndctl list -DH
ndctl wait-scrub ndbus0 >/dev/null 2>&1
base64 -d > /tmp/fw.img <<'B64'
{image}
B64
base64 -d > /tmp/bad.img <<'B64'
{bad}
B64
dd if=/dev/zero of=/tmp/big.img bs=1024 count=1025 2>/dev/null
N=$(for d in /sys/bus/nd/devices/nmem*; do [ "$(cat $d/nfit/handle)" = "0x5" ] && basename $d; done)
echo "=== fw-before"; ndctl list -DF -d $N
echo "=== update"; ndctl update-firmware -f /tmp/fw.img $N 2>&1; echo "rc=$?"
echo "=== fw-staged"; ndctl list -DF -d $N
echo "=== activate"; ndctl activate-firmware ndbus0 >/dev/null 2>&1; echo "rc=$?"
echo "=== fw-activated"; ndctl list -DF -d $N
echo "=== corrupt"; ndctl update-firmware -f /tmp/bad.img $N 2>&1; echo "rc=$?"
echo "=== oversized"; ndctl update-firmware -f /tmp/big.img $N 2>&1; echo "rc=$?"
echo "=== fw-after"; ndctl list -DF -d $N
echo "=== dmesg"; dmesg
"""


def seed_health(config_path: Path) -> None:
    """A state file giving each family's DIMM its own health, as a previous run left it."""
    cfg = load(config_path)
    handlers = build_dispatcher(cfg, {})
    msft, hyperv, hpe1 = (handlers.dimms[s].health for s in (0, 1, 2))
    msft.health, msft.media_temperature, msft.life_used = HEALTH_CRITICAL, encode_temperature(61), 30
    hyperv.health, hyperv.shutdown_count = HEALTH_FATAL, 3
    hpe1.health, hpe1.spares = HEALTH_NON_CRITICAL, 42
    path = state_file_path(cfg)
    assert path is not None
    path.write_bytes(state_file_bytes(handlers.root, list(handlers.dimms.values()), running=False))


@pytest.fixture(scope="module")
def platform(request, tmp_path_factory) -> tuple[Boot, Path]:
    require_qemu()
    work = tmp_path_factory.mktemp("lab-platform")
    for i in range(5):
        with (work / f"nv{i}.img").open("wb") as f:
            f.truncate(32 << 20)
    (work / "lab.toml").write_text(CONFIG)
    seed_health(work / "lab.toml")
    image = work / "fw.img"
    subprocess.run([sys.executable, "-m", "pmemd.cli", "firmware-image", "--version", hex(NEW_VERSION),
                    "--payload", __file__, "--out", str(image)], check=True, capture_output=True)
    good = image.read_bytes()
    bad = good[:-1] + bytes([good[-1] ^ 1])
    (work / "script.sh").write_text(SCRIPT.format(image=base64.encodebytes(good).decode().strip(),
                                                  bad=base64.encodebytes(bad).decode().strip()))
    out = work / "out"
    debian = prepare()  # a kernel and its modules tree, as `make modules_install` leaves one
    own = ["--kernel", str(debian.kernel), "--modules", str(cache_dir() / f"linux-image-{debian.version}"),
           "--append", "nfit.dyndbg=+p"]
    proc = subprocess.run(
        [sys.executable, "-m", "pmemd.cli", "lab", "--config", str(work / "lab.toml"), "--keep", str(out),
         "--timeout", "150", *own, str(work / "script.sh")],
        capture_output=True, text=True, timeout=175,
    )
    summary = json.loads((out / "summary.json").read_text())
    print(f"\n[lab boot platform] wall {summary['wall_s']} s, {summary['dsm_calls']} DSM calls, "
          f"handler median {summary['latency_median_us']} µs, p95 {summary['latency_p95_us']} µs")
    return Boot(proc.returncode, (out / "console.log").read_text(), [], summary), work


def by_handle(boot: Boot, section: str) -> dict[int, dict]:
    return {d["handle"]: d for d in boot.json(section)}


# -- NFIT memdev flags ----------------------------------------------------------------------------


def test_nfit_flags_list_exactly_the_configured_flags(platform: tuple[Boot, Path]) -> None:
    boot, _ = platform
    assert boot.status == 0, boot.console[-3000:]
    flags = {int(h, 16): f.split() for _, h, f in re.findall(r"^(nmem\d+) (0x\w+) \[(.*)\]$", boot.section("flags"), re.M)}
    # health-enabled (smart_notify) stays clear: the QEMU transport cannot raise health events
    assert flags == {1: [], 2: [], 3: ["save_fail", "restore_fail", "flush_fail", "not_armed", "smart_event"],
                     4: ["map_fail"], 5: []}


def test_linux_reports_the_failure_flags_it_finds(platform: tuple[Boot, Path]) -> None:
    dmesg = platform[0].section("dmesg")
    assert re.search(r"Error found in NVDIMM nmem\d flags: save_fail restore_fail flush_fail not_armed", dmesg)
    assert re.search(r"Error found in NVDIMM nmem\d flags: map_fail", dmesg)


def test_a_map_failed_dimm_gets_no_region_and_a_not_armed_one_a_read_only_region(platform: tuple[Boot, Path]) -> None:
    boot, _ = platform
    names = {int(h, 16): n for n, h, _ in re.findall(r"^(nmem\d+) (0x\w+) \[(.*)\]$", boot.section("flags"), re.M)}
    regions = dict(re.findall(r"^region\d+ (nmem\d+),\S+ ro=(\d)$", boot.section("regions"), re.M))
    assert names[4] not in regions and len(regions) == 4
    assert regions[names[3]] == "1" and regions[names[5]] == "0"


# -- health for every family ----------------------------------------------------------------------


def test_every_family_reports_health_from_the_shared_model(platform: tuple[Boot, Path]) -> None:
    health = {h: d["health"] for h, d in by_handle(platform[0], "health").items()}
    assert set(health) == {1, 2, 3, 4, 5}
    msft, hyperv, hpe1, intel = health[1], health[2], health[3], health[5]
    assert (msft["health_state"], msft["temperature_celsius"], msft["life_used_percentage"]) == ("critical", 61.0, 30)
    assert (hyperv["health_state"], hyperv["shutdown_count"]) == ("fatal", 3)
    assert (hpe1["health_state"], hpe1["spares_percentage"]) == ("non-critical", 42)
    assert (intel["health_state"], intel["temperature_celsius"]) == ("ok", 23.0)


# -- firmware update and activation ---------------------------------------------------------------


def firmware(boot: Boot, section: str) -> dict:
    return boot.json(section)[0]["firmware"]


def test_update_firmware_stages_the_image_and_arms_the_dimm(platform: tuple[Boot, Path]) -> None:
    boot, _ = platform
    assert firmware(boot, "fw-before") == {"current_version": INITIAL_VERSION, "can_update": True}
    assert "rc=0" in boot.section("update")
    assert firmware(boot, "fw-staged") == {"current_version": INITIAL_VERSION, "can_update": True,
                                           "next_version": NEW_VERSION, "activate_state": "armed"}


def test_activate_firmware_runs_the_staged_version(platform: tuple[Boot, Path]) -> None:
    boot, _ = platform
    assert "rc=0" in boot.section("activate")
    assert firmware(boot, "fw-activated") == {"current_version": NEW_VERSION, "can_update": True}


def test_a_corrupt_image_fails_verification_and_changes_nothing(platform: tuple[Boot, Path]) -> None:
    boot, _ = platform
    corrupt = boot.section("corrupt")
    assert "firmware verification failure" in corrupt and "rc=0" not in corrupt
    assert firmware(boot, "fw-after") == {"current_version": NEW_VERSION, "can_update": True}


def test_an_image_larger_than_the_dimm_store_is_refused(platform: tuple[Boot, Path]) -> None:
    oversized = platform[0].section("oversized")
    assert "greater than DIMM store" in oversized and "rc=0" not in oversized


def test_the_kernel_logs_the_firmware_dsms_it_sends_with_the_appended_dyndbg(platform: tuple[Boot, Path]) -> None:
    dmesg = platform[0].section("dmesg")
    assert re.search(r"cmd: \d+: family: 0 func: 14 input length", dmesg)  # send data, from ndctl


def test_the_activated_version_is_saved_for_the_next_daemon(platform: tuple[Boot, Path]) -> None:
    _, work = platform
    path = firmware_file_path(load(work / "lab.toml"))
    assert path is not None
    saved = parse_firmware_file(path.read_bytes())
    assert (saved[4].running_version, saved[4].staged_version, saved[3].running_version) == (
        NEW_VERSION, 0, INITIAL_VERSION)
