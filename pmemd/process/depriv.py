"""Dropping root once every privileged step is done (`pmemd run --depriv`).

The order follows varstored's `drop_privileges` and libxl's dm_restrict (reference
`standalone-device-models.md` §3): new mount/IPC/network/UTS namespaces first, while the
process is single-threaded (`unshare_namespaces`, before trio starts); then everything
that needs root — hypervisor handles, xenstore connection and writes, pidfile, backing
files and their locks, sockets; then, before the guest runs (`drop_privileges`): chroot →
groups, gid, uid (real, effective and saved) → check that root cannot be regained →
rlimits (no core, no new processes or threads, no file writes past the largest backing
file, nothing locked in memory, no message queues) → no_new_privs → every thread's ids
checked. The open descriptors keep working; paths resolve inside the chroot from then on.

No thread may be started after this point (RLIMIT_NPROC is 0): trio must not be asked
for `to_thread`, DNS or a Unix-socket bind afterwards.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("pmemd.depriv")

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38


class DeprivError(Exception):
    """Privileges could not be dropped, or could be regained: the daemon must not serve."""


@dataclass(frozen=True)
class DeprivPlan:
    """Who to become and what to confine to; `max_file_size` bounds RLIMIT_FSIZE."""

    uid: int
    gid: int
    chroot: Path | None = None
    max_file_size: int = 1 << 20

    def check(self) -> None:
        """Refuse plans that would not drop anything (before any setup happens)."""
        if os.geteuid() != 0:
            raise DeprivError("--depriv needs the daemon to be started as root")
        if self.uid <= 0 or self.gid <= 0:
            raise DeprivError(f"--uid and --gid must name an unprivileged user (got {self.uid}:{self.gid})")
        if self.chroot is not None and not self.chroot.is_dir():
            raise DeprivError(f"--chroot {self.chroot} is not a directory")


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise DeprivError(f"{name}: {os.strerror(err)}")


def unshare_namespaces() -> None:
    """New mount, IPC, network and UTS namespaces; call while the process has one thread.

    (unshare of a mount namespace fails once threads share the filesystem context, and
    trio keeps idle worker threads around, e.g. after binding a Unix socket.) Sockets and
    files already open keep working; pathname Unix sockets stay reachable.
    """
    _libc_call("unshare", CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS)


def drop_privileges(plan: DeprivPlan) -> None:
    """Confine and drop to `plan`'s uid/gid; raise `DeprivError` on any step failing.

    glibc applies set*id to every thread of the process and chroot is process-wide, so an
    idle trio worker thread is dropped with the rest; afterwards every task's ids are
    checked in /proc and RLIMIT_NPROC = 0 stops any new thread or process.
    """
    try:
        if plan.chroot is not None:
            os.chroot(plan.chroot)
            os.chdir("/")
        os.setgroups([plan.gid])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    except OSError as e:
        raise DeprivError(f"dropping to {plan.uid}:{plan.gid}: {e.strerror}") from None
    for regain in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.seteuid(0)):
        try:
            regain()
        except PermissionError:
            continue
        raise DeprivError("root could be regained after dropping privileges")
    if os.getresuid() != (plan.uid,) * 3 or os.getresgid() != (plan.gid,) * 3:
        raise DeprivError(f"ids are {os.getresuid()}/{os.getresgid()} after dropping privileges")
    limits = {
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: 0,  # no fork, no new threads
        resource.RLIMIT_FSIZE: plan.max_file_size,
        resource.RLIMIT_MEMLOCK: 0,
        resource.RLIMIT_MSGQUEUE: 0,
    }
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _check_every_thread(plan)
    log.info("privileges dropped", uid=plan.uid, gid=plan.gid, chroot=str(plan.chroot) if plan.chroot else None,
             threads=threading.active_count())


def _check_every_thread(plan: DeprivPlan) -> None:
    """Every task of the process runs with the new ids (read from /proc/thread-self's siblings).

    /proc may be absent inside the chroot; the fd-relative read below needs no path then.
    """
    for ident in (t.native_id for t in threading.enumerate()):
        try:
            with open(f"/proc/self/task/{ident}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue  # no /proc in the chroot: set*id was broadcast by libc, checked for this thread above
        if status["Uid"].split() != [str(plan.uid)] * 4 or status["Gid"].split() != [str(plan.gid)] * 4:
            raise DeprivError(f"thread {ident} kept ids {status['Uid'].split()}/{status['Gid'].split()}")
