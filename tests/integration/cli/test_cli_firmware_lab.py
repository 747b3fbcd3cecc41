"""`pmemd firmware-image` writes images the DIMM verifies; `pmemd lab --kernel/--modules` refuses
what it cannot boot before starting anything."""

from __future__ import annotations

import json
from pathlib import Path

from pmemd.dsm.firmware_image import verify_image
from pmemd.lab.image import ImageError, prepare
from tests.harness.daemon import pmemd


def test_firmware_image_writes_a_verified_image_of_the_version(tmp_path: Path) -> None:
    (tmp_path / "payload").write_bytes(b"microcode" * 10)
    proc = pmemd("firmware-image", "--version", "0x200000001", "--payload", str(tmp_path / "payload"),
                 "--out", str(tmp_path / "fw.img"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "0x200000001"
    info = verify_image((tmp_path / "fw.img").read_bytes())
    assert (info.version, info.payload_size) == (0x200000001, 90)


def test_firmware_image_refuses_version_0(tmp_path: Path) -> None:
    proc = pmemd("firmware-image", "--version", "0", "--out", str(tmp_path / "fw.img"))
    assert proc.returncode == 1 and "between 1 and 2^64 - 1" in proc.stderr
    assert not (tmp_path / "fw.img").exists()


def test_lab_refuses_a_kernel_that_is_not_a_file(tmp_path: Path) -> None:
    proc = pmemd("lab", "--config", "configs/example.toml", "--kernel", str(tmp_path / "bzImage"),
                 str(tmp_path / "script.sh"))
    assert proc.returncode == 1 and "is not a file" in proc.stderr


def test_lab_refuses_modules_without_their_kernel(tmp_path: Path) -> None:
    proc = pmemd("lab", "--config", "configs/example.toml", "--modules", str(tmp_path), str(tmp_path / "s.sh"))
    assert proc.returncode == 1 and "--modules goes with --kernel" in proc.stderr


def test_lab_refuses_a_modules_tree_without_modules_dep(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    try:
        prepare(tmp_path / "cache", kernel=kernel, modules=tmp_path)
    except ImageError as e:
        assert "modules.dep" in str(e)
    else:
        raise AssertionError("a tree without modules.dep was accepted")


def test_lab_builds_an_initramfs_from_a_modules_tree_with_builtin_drivers(tmp_path: Path) -> None:
    release = tmp_path / "mods" / "lib" / "modules" / "6.9.0-dev"
    (release / "kernel").mkdir(parents=True)
    (release / "kernel" / "qemu_fw_cfg.ko").write_bytes(b"\x7fELF fake module")
    (release / "modules.dep").write_text("kernel/qemu_fw_cfg.ko:\n")
    builtin = ["nfit", "libnvdimm", "nd_pmem", "nd_btt", "nd_e820", "dax_pmem", "device_dax", "kmem"]
    (release / "modules.builtin").write_text("".join(f"kernel/drivers/{m}.ko\n" for m in builtin))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    boot = prepare(tmp_path / "cache", kernel=kernel, modules=tmp_path / "mods")
    archive = boot.initramfs.read_bytes()
    assert (boot.kernel, boot.version) == (kernel.resolve(), "6.9.0-dev")
    assert b"lib/modules/6.9.0-dev/kernel/qemu_fw_cfg.ko" in archive and b"fake module" in archive
