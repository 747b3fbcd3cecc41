"""The lab guest's boot files: a Debian kernel and an initramfs with busybox, NVDIMM modules and ndctl.

Everything comes from Debian packages on the host, cached under `cache_dir()`
(`$PMEMD_LAB_CACHE`, default `~/.cache/pmemd-lab`) and rebuilt only when an input changes:

* kernel: the package `linux-image-amd64` depends on, fetched with `apt-get download`
  and unpacked with `dpkg -x` (never installed); `depmod -b` writes the modules.dep the
  package lacks. `vmlinux` is the xz payload of `vmlinuz`, decompressed with `lzma`, so
  QEMU boots it through PVH (about twice as fast as the compressed image);
* initramfs (newc cpio, written here): `/bin/busybox` (busybox-static), the modules in
  `MODULES` and their dependencies, `ndctl` and `keyctl` (keyutils: kernel keys for DIMM
  security) with the shared libraries `ldd` lists, and `/init`, which loads `qemu_fw_cfg`,
  runs the early script QEMU passes as fw_cfg `opt/pmemd/early` if any (before the NVDIMM
  modules: e.g. loading the DIMM keys the kernel unlocks with at probe, as ndctl's
  modprobe hook `ndctl load-keys` does; with the NVDIMM drivers built into a developer's
  kernel it runs after they probed), loads the other modules, runs the script passed as
  `opt/pmemd/script` and prints `pmemd-lab: exit <status>` before powering off.

The initramfs's cache key hashes the kernel version, the host's busybox, ndctl and keyctl
binaries and `INIT`, so an upgraded package or an edited init rebuilds it. Runs sharing the
cache take turns building and publish each entry atomically (`pmemd.lab.cache`).

A developer's own kernel (`pmemd lab --kernel IMG [--modules DIR]`): IMG is booted as given
(a bzImage, or a vmlinux built with CONFIG_PVH); DIR is where `make modules_install
INSTALL_MOD_PATH=DIR` put its modules (DIR/lib/modules/<release>, with modules.dep), or that
release directory itself. Modules the kernel has built in (modules.builtin) need no file;
without `--modules` the kernel must have every NVDIMM driver built in.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from .cache import locked, publish, remove_abandoned

log = structlog.get_logger("pmemd.lab")

KERNEL_META = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
NDCTL = Path("/usr/bin/ndctl")
KEYCTL = Path("/usr/bin/keyctl")
MODULES = ("qemu_fw_cfg", "nfit", "libnvdimm", "nd_pmem", "nd_btt", "nd_e820", "dax_pmem", "device_dax", "kmem")
SCRIPT_FW_CFG = "opt/pmemd/script"
EARLY_FW_CFG = "opt/pmemd/early"
EXIT_MARKER = "pmemd-lab: exit "
XZ_MAGIC = b"\xfd7zXZ\x00"

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /var/tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
modprobe qemu_fw_cfg 2>/dev/null || [ -d /sys/module/qemu_fw_cfg ] || echo "pmemd-lab: modprobe qemu_fw_cfg failed"
early=/sys/firmware/qemu_fw_cfg/by_name/{EARLY_FW_CFG}/raw
if [ -r $early ]; then cp $early /tmp/early; sh /tmp/early || echo "pmemd-lab: early script failed"; fi
for m in {" ".join(m for m in MODULES if m not in ("qemu_fw_cfg", "libnvdimm", "kmem"))}; do
    modprobe $m 2>/dev/null || [ -d /sys/module/$m ] || echo "pmemd-lab: modprobe $m failed"
done
script=/sys/firmware/qemu_fw_cfg/by_name/{SCRIPT_FW_CFG}/raw
[ -r /script ] && script=/script  # the Xen lab appends the script to the initramfs
if [ -r $script ]; then cp $script /tmp/script; sh /tmp/script; rc=$?; else echo "pmemd-lab: no script"; rc=127; fi
echo "{EXIT_MARKER}$rc"
poweroff -f
"""


class ImageError(RuntimeError):
    """A boot file could not be prepared; the message says which step and why."""


@dataclass(frozen=True)
class BootFiles:
    kernel: Path  # uncompressed vmlinux (PVH boot)
    initramfs: Path
    version: str  # kernel release, e.g. 6.1.0-56-amd64


def cache_dir() -> Path:
    return Path(os.environ.get("PMEMD_LAB_CACHE", Path.home() / ".cache" / "pmemd-lab"))


def prepare(cache: Path | None = None, *, kernel: Path | None = None, modules: Path | None = None) -> BootFiles:
    """The kernel and initramfs, from the cache when their inputs have not changed.

    `kernel` (and its `modules` tree) replaces Debian's kernel: see the module docstring.
    """
    cache = cache or cache_dir()
    if modules is not None and kernel is None:
        raise ImageError("--modules goes with --kernel: the modules of that kernel")
    with locked(cache):
        remove_abandoned(cache)
        if kernel is not None:
            return _own_kernel(cache, kernel, modules)
        package = _kernel_package()
        version = package.removeprefix("linux-image-")
        root = _unpacked_kernel(cache, package, version)
        vmlinux = _vmlinux(cache, root, version)
        initramfs = _initramfs(cache, (root / "lib/modules" / version).resolve(), version)
    return BootFiles(vmlinux, initramfs, version)


def _own_kernel(cache: Path, kernel: Path, modules: Path | None) -> BootFiles:
    if not kernel.is_file():
        raise ImageError(f"kernel image {kernel} is not a file")
    moddir = None if modules is None else _release_dir(modules)
    version = moddir.name if moddir is not None else "builtin"
    return BootFiles(kernel.resolve(), _initramfs(cache, moddir, version), version)


def _release_dir(modules: Path) -> Path:
    """DIR/lib/modules/<release> (or DIR itself when it is one): the one holding modules.dep."""
    if (modules / "modules.dep").is_file():
        return modules.resolve()
    releases = [d for d in (modules / "lib" / "modules").glob("*") if (d / "modules.dep").is_file()]
    if len(releases) != 1:
        raise ImageError(f"{modules}: expected one lib/modules/<release> with modules.dep (run depmod), "
                         f"found {len(releases)}")
    return releases[0].resolve()


def _run(args: list[str], **kwargs: Any) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=True, **kwargs)
    except FileNotFoundError:
        raise ImageError(f"{args[0]} is not installed") from None
    except subprocess.CalledProcessError as e:
        raise ImageError(f"{' '.join(args)} failed: {e.stderr.strip()}") from None
    return proc.stdout


def _kernel_package() -> str:
    """The versioned kernel package Debian's meta package depends on."""
    match = re.search(r"Depends: (linux-image-\S+)", _run(["apt-cache", "depends", KERNEL_META]))
    if match is None:
        raise ImageError(f"apt-cache depends {KERNEL_META} names no linux-image package")
    return match.group(1)


def _unpacked_kernel(cache: Path, package: str, version: str) -> Path:
    root = cache / package
    if (root / "lib/modules" / version / "modules.dep").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)  # an unpacked tree without modules.dep: an older layout
    log.info("lab: fetching kernel package", package=package)

    def unpack(tmp: Path) -> None:
        downloads = tmp.parent / "downloads"
        downloads.mkdir()
        _run(["apt-get", "download", package], cwd=downloads)
        debs = sorted(downloads.glob(f"{package}_*.deb"))
        if not debs:
            raise ImageError(f"apt-get download {package} left no .deb in {downloads}")
        _run(["dpkg", "-x", str(debs[-1]), str(tmp)])
        _run(["depmod", "-b", str(tmp), version])

    return publish(cache, package, unpack)


def _vmlinux(cache: Path, root: Path, version: str) -> Path:
    out = cache / f"vmlinux-{version}"
    if out.exists():
        return out
    image = (root / "boot" / f"vmlinuz-{version}").read_bytes()
    start = image.find(XZ_MAGIC)
    if start < 0:
        raise ImageError(f"vmlinuz-{version} carries no xz payload")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = decompressor.decompress(image[start:])  # trailing bytes after the stream are ignored
    if not elf.startswith(b"\x7fELF"):
        raise ImageError(f"the xz payload of vmlinuz-{version} is not an ELF image")
    return publish(cache, out.name, lambda tmp: tmp.write_bytes(elf))


def _initramfs(cache: Path, moddir: Path | None, version: str) -> Path:
    """The initramfs with the modules of `moddir` (None: a kernel with the drivers built in)."""
    files = _initramfs_files(moddir, version)
    key = hashlib.sha256()
    key.update(version.encode() + INIT.encode() + str(moddir).encode())
    if moddir is not None:
        key.update((moddir / "modules.dep").read_bytes())
    for host in (BUSYBOX, NDCTL, KEYCTL):
        key.update(host.read_bytes())
    out = cache / f"initramfs-{version}-{key.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    log.info("lab: building initramfs", out=str(out))
    for old in cache.glob(f"initramfs-{version}-*.cpio"):
        old.unlink()

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            _write_cpio(f, files)

    return publish(cache, out.name, write)


def _initramfs_files(moddir: Path | None, version: str) -> dict[str, bytes | str]:
    """Archive path → file bytes (or a str: symlink target)."""
    files: dict[str, bytes | str] = {"init": INIT.encode(), "bin/busybox": BUSYBOX.read_bytes()}
    if moddir is not None:
        closure = _module_closure(moddir)
        for name in closure:
            files[f"lib/modules/{version}/{name}"] = (moddir / name).read_bytes()
        dep_lines = [line for line in (moddir / "modules.dep").read_text().splitlines()
                     if line.partition(":")[0] in closure]
        files[f"lib/modules/{version}/modules.dep"] = ("\n".join(dep_lines) + "\n").encode()
    for binary in (NDCTL, KEYCTL):
        if not binary.exists():
            raise ImageError(f"{binary} is not installed (Debian packages ndctl, keyutils)")
        files[str(binary).lstrip("/")] = binary.read_bytes()
        for lib in _shared_libraries(binary):
            files[lib.lstrip("/")] = Path(lib).resolve().read_bytes()
    files["etc/ndctl.conf.d/.keep"] = b""
    return files


def _module_closure(moddir: Path) -> list[str]:
    """MODULES and everything they depend on, as paths relative to `moddir`."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
    by_name = {Path(p).name.removesuffix(".ko"): p for p in deps}
    builtin_file = moddir / "modules.builtin"
    builtin = {Path(p).name.removesuffix(".ko") for p in builtin_file.read_text().split()} if builtin_file.exists() else set()
    missing = [m for m in MODULES if m not in by_name and m not in builtin]
    if missing:
        raise ImageError(f"kernel modules not found in {moddir} (nor built in): {', '.join(missing)}")
    closure: set[str] = set()
    todo = [by_name[m] for m in MODULES if m in by_name]
    while todo:
        path = todo.pop()
        if path not in closure:
            closure.add(path)
            todo.extend(deps.get(path, []))
    return sorted(closure)


def _shared_libraries(binary: Path) -> list[str]:
    libs = []
    for line in _run(["ldd", str(binary)]).splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


def _write_cpio(f: BinaryIO, files: dict[str, bytes | str]) -> None:
    """A newc cpio archive (the kernel's initramfs format), directories first."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    ino = 1
    for d in sorted(dirs):
        _cpio_entry(f, d, 0o040755, b"", ino)
        ino += 1
    for path, data in sorted(files.items()):
        if isinstance(data, str):
            _cpio_entry(f, path, 0o120777, data.encode(), ino)
        else:
            executable = path in ("init", "bin/busybox") or path.startswith("usr/bin/") or ".so" in path
            _cpio_entry(f, path, 0o100755 if executable else 0o100644, data, ino)
        ino += 1
    _cpio_entry(f, "TRAILER!!!", 0, b"", 0)


def _cpio_entry(f: BinaryIO, name: str, mode: int, data: bytes, ino: int) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    f.write(header + encoded)
    f.write(b"\0" * (-(len(header) + len(encoded)) % 4))
    f.write(data)
    f.write(b"\0" * (-len(data) % 4))
