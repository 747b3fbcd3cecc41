"""Boot files of the nested Xen lab: Xen 4.17, a dom0 kernel + initramfs, the guest's bzImage.

Cached beside `pmemd lab`'s files (`pmemd.lab.image.cache_dir()`), from Debian packages:

* `xen`: `xen-hypervisor-4.17-amd64`, fetched with `apt-get download` and unpacked with
  `dpkg -x` (installing it would change the host's boot loader); its `xen-4.17-amd64.gz`
  decompressed, the 32-bit multiboot ELF QEMU's `-kernel` loads;
* dom0 kernel: the lab kernel package's `vmlinuz` (Xen takes a bzImage as dom0);
* `dom0-initramfs`: busybox + the 9p/virtio/xen modules (`DOM0_MODULES`) + `DOM0_INIT`, which
  mounts this machine's `/` read-only over virtio-9p, tmpfs where Xen's tools write, the lab's
  shared directories read-write at their own paths, and runs the run's `dom0.sh`.

Concurrent runs are safe: builds happen under an flock on `xen.lock`, into unique temporary
names renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pmemd.lab import image
from pmemd.lab.image import BUSYBOX, ImageError, _run, _write_cpio

XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
XEN_GZ = "boot/xen-4.17-amd64.gz"
DOM0_MODULES = (
    "fs/netfs/netfs", "fs/fscache/fscache", "net/9p/9pnet", "fs/9p/9p", "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio", "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci", "net/9p/9pnet_virtio", "drivers/xen/xen-privcmd", "drivers/xen/xenfs/xenfs",
    "drivers/xen/xen-evtchn", "drivers/xen/xen-gntdev", "drivers/xen/xen-gntalloc",
)

# dom0's /init. Kernel args: pmemdlab=<work dir> (mounted from tag "lab" at that path).
# dom0 sees the host's / read-only over 9p, with a tmpfs over each of these (writable scratch).
DOM0_TMPFS = ("tmp", "run", "var/lib/xen", "var/log", "var/tmp", "var/lib/xenstored")

DOM0_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /bin
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "pmemd-xen-lab: dom0 initramfs up at $(cut -d' ' -f1 /proc/uptime)s"
for m in netfs fscache 9pnet 9p virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet_virtio xen-privcmd xenfs xen-evtchn xen-gntdev xen-gntalloc; do
  insmod /mods/$m.ko || echo "pmemd-xen-lab: insmod $m failed"
done
W=$(sed -n 's/.*pmemdlab=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose root /newroot || { echo "pmemd-xen-lab: 9p root failed"; poweroff -f; }
for d in @TMPFS@; do mount -t tmpfs tmpfs /newroot/$d 2>/dev/null; done
mkdir -p /newroot$W
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 lab /newroot$W || { echo "pmemd-xen-lab: 9p lab failed"; poweroff -f; }
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh $W/dom0.sh
"""
DOM0_INIT = DOM0_INIT.replace("@TMPFS@", " ".join(DOM0_TMPFS))


@dataclass(frozen=True)
class XenBootFiles:
    xen: Path  # multiboot ELF
    dom0_kernel: Path  # bzImage
    dom0_initramfs: Path
    guest_kernel: Path  # bzImage (qemu-xen's direct kernel boot)
    guest_initramfs: Path  # pmemd lab's initramfs; the run appends its script
    version: str


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    with (cache / "xen.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _publish(out: Path, data: bytes) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.rename(out)


def prepare_xen(cache: Path | None = None) -> XenBootFiles:
    """Every boot file of the nested lab, from the cache when its inputs are unchanged."""
    cache = cache or image.cache_dir() / "xen"  # its own guest initramfs: `pmemd lab` runs of other trees prune theirs
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache):
        guest = image.prepare(cache)
        package = image._kernel_package()
        root = image._unpacked_kernel(cache, package, guest.version)
        xen = _xen(cache)
        dom0_initramfs = _dom0_initramfs(cache, root, guest.version)
    vmlinuz = root / "boot" / f"vmlinuz-{guest.version}"
    return XenBootFiles(xen, vmlinuz, dom0_initramfs, vmlinuz, guest.initramfs, guest.version)


def _xen(cache: Path) -> Path:
    out = cache / "xen-4.17.elf"
    if out.exists():
        return out
    downloads = cache / "downloads"
    downloads.mkdir(exist_ok=True)
    for stale in downloads.glob(f"{XEN_PACKAGE}_*.deb"):
        stale.unlink()
    _run(["apt-get", "download", XEN_PACKAGE], cwd=downloads)
    debs = sorted(downloads.glob(f"{XEN_PACKAGE}_*.deb"))
    if not debs:
        raise ImageError(f"apt-get download {XEN_PACKAGE} left no .deb in {downloads}")
    tmp = cache / f"xen-hypervisor.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg", "-x", str(debs[-1]), str(tmp)])
    try:
        _publish(out, gzip.decompress((tmp / XEN_GZ).read_bytes()))
    except OSError as e:
        raise ImageError(f"{XEN_PACKAGE} has no {XEN_GZ}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        debs[-1].unlink()
    return out


def _dom0_initramfs(cache: Path, root: Path, version: str) -> Path:
    moddir = root / "lib/modules" / version / "kernel"
    files: dict[str, bytes | str] = {"init": DOM0_INIT.encode(), "bin/busybox": BUSYBOX.read_bytes()}
    for m in DOM0_MODULES:
        path = moddir / f"{m}.ko"
        if not path.exists():
            raise ImageError(f"dom0 module {m}.ko missing from the kernel package")
        files[f"mods/{path.name}"] = path.read_bytes()
    key = hashlib.sha256(version.encode() + DOM0_INIT.encode() + files["bin/busybox"]).hexdigest()[:16]  # type: ignore[operator]
    out = cache / f"dom0-initramfs-{version}-{key}.cpio"
    if out.exists():
        return out
    for old in cache.glob("dom0-initramfs-*.cpio"):
        old.unlink()
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        _write_cpio(f, files)
    tmp.rename(out)
    return out
