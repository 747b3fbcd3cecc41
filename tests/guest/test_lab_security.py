"""Intel DIMM security driven by ndctl 76 and the kernel's key-based unlock in a real Linux 6.1 guest.

Three boots of one Intel DIMM on the same backing file (each a power-on for the DIMM):

1. setup: a user master key (`keyctl`), `ndctl setup-passphrase`, `update-passphrase`, a
   master passphrase, then two wrong passphrases written to `nmem0/security` with a bogus
   encrypted key; the console carries the key blobs ndctl stored, for the next boots.
2. keys loaded early (the lab's `--early` hook, as ndctl's `load-keys` modprobe hook does):
   the kernel unlocks the DIMM with its key at probe; `freeze-security`; removing the
   passphrase is then refused.
3. no keys at boot: the DIMM stays locked and no namespace probes; keys loaded, the DIMM
   re-probed (unlocked), `remove-passphrase`, `sanitize-dimm --crypto-erase`, then
   `--overwrite` and `wait-overwrite` — after which the whole backing file is zeros.

Linux 6.1 reports a frozen DIMM through its own `nmemX/frozen` attribute (`security` keeps
saying "unlocked"; older kernels printed "frozen" there); ndctl lists it as `security_frozen`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pmemd.dsm.security import Security
from tests.harness.lab import Boot, lab_boot

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

PMEM, LABELS = 256 << 20, 2 << 20
KEK = "0123456789abcdef0123456789abcdef"  # the user master key (kek) sealing the passphrases
DIMM_ID = "8680-00004d50"

CONFIG = """domid = 4
[guest]
lowmem = "512M"
[[nvdimm]]
backing = "nv0.img"
size = "258M"
label_size = "2M"
"""

SEC = "sec=/sys/bus/nd/devices/nmem0/security\n"

SETUP_BOOT = SEC + f"""
echo "=== initial"; cat $sec
mkdir -p /etc/ndctl/keys
ndctl disable-region all >/dev/null 2>&1
keyctl add user nvdimm-master "{KEK}" @u >/dev/null
echo "=== setup"; ndctl setup-passphrase -k user:nvdimm-master nmem0 2>&1; cat $sec
echo "=== update"; ndctl update-passphrase nmem0 2>&1; cat $sec
echo "=== master"; ndctl setup-passphrase -m -k user:nvdimm-master nmem0 2>&1; cat $sec
bogus=$(keyctl add encrypted nvdimm:bogus "new enc32 user:nvdimm-master 32" @u)
echo "=== wrong"; for i in 1 2; do echo "disable $bogus" > $sec || echo "refused $i"; done; cat $sec
echo "=== blobs"; for f in /etc/ndctl/keys/*.blob; do echo "$(basename "$f") $(cat "$f")"; done
"""

KEY_BOOT = SEC + """
echo "=== boot"; cat $sec; ls /dev/pmem0
ndctl disable-region all >/dev/null 2>&1
echo "=== freeze"; ndctl freeze-security nmem0 2>&1; cat /sys/bus/nd/devices/nmem0/frozen
echo "=== list"; ndctl list -D -d nmem0
echo "=== remove-frozen"; ndctl remove-passphrase nmem0 2>&1; echo "rc=$?"; cat $sec
"""

FRESH_BOOT = SEC + """
echo "=== boot"; cat $sec; ls /dev/pmem0 2>&1
{keys}
ndctl disable-region all >/dev/null 2>&1; ndctl disable-dimm nmem0 >/dev/null 2>&1; ndctl enable-dimm nmem0 >/dev/null 2>&1
echo "=== reprobed"; cat $sec
echo "=== remove"; ndctl remove-passphrase nmem0 2>&1; cat $sec
ndctl enable-region all >/dev/null 2>&1
printf 'MARKER-A' | dd of=/dev/pmem0 bs=4096 conv=sync 2>/dev/null
echo "=== before-erase"; dd if=/dev/pmem0 bs=8 count=1 2>/dev/null; echo
ndctl disable-region all >/dev/null 2>&1
echo "=== crypto-erase"; ndctl sanitize-dimm --crypto-erase --zero-key nmem0 2>&1
ndctl enable-region all >/dev/null 2>&1
echo "=== after-erase"; dd if=/dev/pmem0 bs=8 count=1 2>/dev/null | od -An -tx1
printf 'MARKER-B' | dd of=/dev/pmem0 bs=4096 seek=1000 conv=sync 2>/dev/null
ndctl disable-region all >/dev/null 2>&1
echo "=== init-labels"; ndctl init-labels -f nmem0 2>&1
ndctl disable-dimm nmem0 >/dev/null 2>&1
echo "=== overwrite"; ndctl sanitize-dimm --overwrite --zero-key nmem0 2>&1; cat $sec
echo "=== wait"; ndctl wait-overwrite nmem0 2>&1; echo "rc=$?"; cat $sec
"""


def early_keys(blobs: dict[str, str]) -> str:
    """Shell that puts the kek and the sealed passphrases in root's user keyring, as `ndctl load-keys` would."""
    lines = ["mkdir -p /etc/ndctl/keys", f'keyctl add user nvdimm-master "{KEK}" @u >/dev/null']
    for name, blob in blobs.items():
        description = name.split("_")[0] + ":" + DIMM_ID  # nvdimm_<id>_<host>.blob -> nvdimm:<id>
        lines.append(f"echo '{blob}' > '/etc/ndctl/keys/{name}'")
        lines.append(f'keyctl add encrypted {description} "load {blob}" @u >/dev/null')
    return "\n".join(lines) + "\n"


def security_file(files: Path) -> Security:
    return Security.from_bytes((files / "nv0.img.pmemd-security").read_bytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("lab-security")
    with (workdir / "nv0.img").open("wb") as f:
        f.truncate(PMEM + LABELS)
    return workdir


@pytest.fixture(scope="module")
def setup_boot(request, files: Path) -> tuple[Boot, Security]:
    boot = lab_boot(request, files, CONFIG, SETUP_BOOT)
    assert boot.status == 0, boot.console[-3000:]
    return boot, security_file(files)


@pytest.fixture(scope="module")
def keys(setup_boot) -> str:
    blobs = dict(line.split(" ", 1) for line in setup_boot[0].section("blobs").splitlines() if line.strip())
    assert set(blobs) == {f"nvdimm_{DIMM_ID}_(none).blob", f"nvdimm-master_{DIMM_ID}_(none).blob"}
    return early_keys(blobs)


@pytest.fixture(scope="module")
def key_boot(request, files: Path, keys: str) -> Boot:
    boot = lab_boot(request, files, CONFIG, KEY_BOOT, early=keys)
    assert boot.status == 0, boot.console[-3000:]
    return boot


@pytest.fixture(scope="module")
def fresh_boot(request, files: Path, keys: str, key_boot: Boot) -> Boot:
    boot = lab_boot(request, files, CONFIG, FRESH_BOOT.format(keys=keys))
    assert boot.status == 0, boot.console[-3000:]
    return boot


def last_line(boot: Boot, section: str) -> str:
    return boot.section(section).strip().splitlines()[-1]


# -- boot 1: passphrases -----------------------------------------------------------------------


def test_a_fresh_dimm_reads_disabled(setup_boot) -> None:
    assert last_line(setup_boot[0], "initial") == "disabled"


def test_setup_passphrase_with_a_kernel_master_key_enables_security(setup_boot) -> None:
    boot, _ = setup_boot
    assert "passphrase enabled for 1 nmem" in boot.section("setup")
    assert last_line(boot, "setup") == "unlocked"


def test_update_passphrase_replaces_it(setup_boot) -> None:
    boot, _ = setup_boot
    assert "passphrase updated for 1 nmem" in boot.section("update")
    assert last_line(boot, "update") == "unlocked"


def test_the_master_passphrase_is_set_from_the_factory_zeros(setup_boot) -> None:
    boot, saved = setup_boot
    assert "passphrase enabled for 1 nmem" in boot.section("master")
    assert saved.master is not None


def test_wrong_passphrases_are_refused_and_counted(setup_boot) -> None:
    boot, saved = setup_boot
    wrong = boot.section("wrong")
    assert "refused 1" in wrong and "refused 2" in wrong and "Invalid argument" in wrong
    assert last_line(boot, "wrong") == "unlocked"
    assert saved.user_attempts == 2


# -- boot 2: the kernel unlocks at probe; freeze ------------------------------------------------


def test_after_a_reboot_the_kernel_unlocks_the_dimm_with_its_key_at_probe(key_boot: Boot) -> None:
    assert key_boot.section("boot").split() == ["unlocked", "/dev/pmem0"]
    (loaded,) = key_boot.events("security state loaded")
    assert loaded["locked"] is True  # the daemon's power-on locked it; the kernel's unlock (fn 22) opened it


def test_freeze_security_freezes_the_dimm(key_boot: Boot) -> None:
    assert "security froze 1 nmem" in key_boot.section("freeze")
    assert last_line(key_boot, "freeze") == "1"
    (dimm,) = key_boot.json("list")
    assert dimm["security"] == "unlocked" and dimm["security_frozen"] is True


def test_a_frozen_dimm_refuses_to_remove_its_passphrase(key_boot: Boot) -> None:
    lines = key_boot.section("remove-frozen").strip().splitlines()
    assert "rc=1" in lines and lines[-1] == "unlocked"


# -- boot 3: locked without keys; remove, crypto erase, overwrite -------------------------------


def test_without_its_key_the_dimm_stays_locked_and_no_namespace_probes(fresh_boot: Boot) -> None:
    boot = fresh_boot.section("boot")
    assert boot.splitlines()[0] == "locked" and "No such file" in boot


def test_keys_loaded_later_unlock_the_dimm_when_it_is_probed_again(fresh_boot: Boot) -> None:
    assert last_line(fresh_boot, "reprobed") == "unlocked"


def test_remove_passphrase_after_a_fresh_boot_disables_security(fresh_boot: Boot) -> None:
    assert "passphrase removed for 1 nmem" in fresh_boot.section("remove")
    assert last_line(fresh_boot, "remove") == "disabled"


def test_crypto_erase_zeroes_what_the_guest_wrote(fresh_boot: Boot) -> None:
    assert fresh_boot.section("before-erase").strip() == "MARKER-A"
    assert "sanitized 1 nmem" in fresh_boot.section("crypto-erase")
    assert fresh_boot.section("after-erase").split() == ["00"] * 8


def test_overwrite_runs_until_wait_overwrite_sees_it_complete(fresh_boot: Boot) -> None:
    assert "initialized 1 nmem" in fresh_boot.section("init-labels")
    overwrite = fresh_boot.section("overwrite")
    assert "overwrite issued for 1 nmem" in overwrite and last_line(fresh_boot, "overwrite") == "overwrite"
    assert fresh_boot.section("wait").strip().splitlines()[-2:] == ["rc=0", "disabled"]
    assert fresh_boot.events("overwrite complete")


def test_after_the_overwrite_the_whole_backing_file_pmem_and_labels_is_zeros(fresh_boot: Boot, files: Path) -> None:
    data = (files / "nv0.img").read_bytes()
    assert len(data) == PMEM + LABELS
    assert re.fullmatch(rb"\x00*", data)
