"""The nested Xen lab's driver inside dom0: each guest boot with pmemd as its NVDIMM device model.

Run by the lab's `dom0.sh` as `python -m pmemd.lab.dom0 PLAN` once Xen's daemons are up. For
each boot of PLAN (JSON, written by `pmemd.lab.xen_run`), the operator workflow of the README:
`xl create -p` -> `pmemd run --domain N --config F` -> state key "running" -> `xl unpause`;
then it follows the guest's serial log until the script's exit line or the domain is gone,
and stops pmemd. The kill drill: on the guest line `pmemd-lab: kill-daemon` pmemd is killed
with SIGKILL and `pmemd release` runs (the unit's ExecStopPost); on `pmemd-lab: restart-daemon`
pmemd is started again. Every wait has a deadline. Results go to PLAN's `results` file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXIT_MARKER = "pmemd-lab: exit "
KILL_MARKER = "pmemd-lab: kill-daemon"
CHECK_MARKER = "pmemd-lab: check-backing "  # SPA HEX: are these bytes in the backing file now?
RESTART_MARKER = "pmemd-lab: restart-daemon"


def log(message: str) -> None:
    print(f"pmemd-xen-lab: [{time.monotonic():9.1f}] {message}", flush=True)


def sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def domain_exists(domid: int) -> bool:
    """In-process (libxenctrl): spawning `xl` every second would starve the guest's device model
    of dom0's CPU under nested TCG."""
    import ctypes

    from pmemd.xen.real import domctl
    from pmemd.xen.real.libs import load

    f = load().f
    global _XC
    if _XC is None:
        _XC = f["xc_interface_open"](None, None, 0)
    buf = ctypes.create_string_buffer(domctl.GETDOMAININFO_BUFFER)
    n = f["xc_domain_getinfolist"](_XC, domid, 1, buf)
    return n == 1 and domctl.parse_getdomaininfo(buf.raw).domid == domid and \
        domctl.parse_getdomaininfo(buf.raw).state != "destroyed"


_XC = None
POLL = 1.0  # seconds between looks at the guest's serial log and the domain


def xs_read(path: str) -> str | None:
    r = sh("xenstore-read", path, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else None


class Daemon:
    """One `pmemd run` for the boot's domain, its output appended to the boot's daemon log."""

    def __init__(self, plan: dict[str, Any], boot: dict[str, Any], domid: int) -> None:
        self.cmd = [plan["python"], "-m", "pmemd.cli", "run", "--config", boot["pmemd_config"],
                    "--domain", str(domid), "--log-format", "json"]
        self.log_path = boot["daemon_log"]
        self.domid = domid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline: float) -> bool:
        """Start pmemd and wait for its state key to read "running". An "error" left by the
        previous daemon (`pmemd release` writes it) counts only once this one wrote a state."""
        path = f"/local/domain/{self.domid}/pmemd/state"
        left = xs_read(path)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ours = False
        while time.monotonic() < deadline:
            state = xs_read(path)
            ours = ours or state != left
            if state == "running":
                return True
            if (state == "error" and ours) or self.proc.poll() is not None:
                log(f"pmemd failed to start: state {state}, exit {self.proc.poll()}")
                return False
            time.sleep(POLL)
        log("pmemd did not report running in time")
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, grace: float) -> int | None:
        """Wait `grace` s for pmemd to leave by itself (domain gone), then SIGTERM, then SIGKILL."""
        if self.proc is None:
            return None
        for sig, wait in ((None, grace), (signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


def run_boot(plan: dict[str, Any], boot: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {"name": boot["name"], "status": None}
    serial = Path(boot["serial"])
    serial.unlink(missing_ok=True)
    r = sh("xl", "create", "-p", boot["xl_config"], timeout=180)
    if r.returncode != 0:
        result["error"] = f"xl create -p failed: {r.stderr.strip()[-2000:]}"
        return result
    domid = int(sh("xl", "domid", boot["name"]).stdout.strip())
    log(f"{boot['name']}: domain {domid} created paused")
    daemon = Daemon(plan, boot, domid)
    deadline = started + plan["timeout"]
    try:
        if not daemon.start(min(deadline, time.monotonic() + 180)):
            result["error"] = "pmemd did not start"
            return result
        sh("xl", "unpause", boot["name"])
        log(f"{boot['name']}: pmemd running, guest unpaused")
        result["status"] = follow(boot, daemon, serial, deadline, result)
    finally:
        for _ in range(30):  # on_poweroff=destroy: xl removes it shortly after the guest powers off
            if not domain_exists(domid):
                break
            time.sleep(1)
        else:
            sh("xl", "destroy", boot["name"])
        result["pmemd_exit"] = daemon.stop(grace=20.0)
        result["wall_s"] = round(time.monotonic() - started, 1)
        log(f"{boot['name']}: done: {result}")
    return result


def follow(boot: dict[str, Any], daemon: Daemon, serial: Path, deadline: float, result: dict[str, Any]) -> int | None:
    """Read the guest serial log until the exit line or the domain's end; run the kill drill."""
    offset, pending = 0, ""
    while time.monotonic() < deadline:
        if serial.exists():
            with serial.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in (raw.rstrip("\r") for raw in lines):
                if line.startswith(EXIT_MARKER):
                    return int(line[len(EXIT_MARKER):].strip() or 125)
                if line.startswith(CHECK_MARKER):
                    result.setdefault("checks", []).append(check_backing(boot, line[len(CHECK_MARKER):]))
                elif line.startswith(KILL_MARKER):
                    log("kill drill: SIGKILL to pmemd, then pmemd release")
                    daemon.kill()
                    r = sh(daemon.cmd[0], "-m", "pmemd.cli", "release", "--config", boot["pmemd_config"],
                           "--domain", str(daemon.domid), timeout=60)
                    result["release"] = (r.stdout + r.stderr).strip()[-500:]
                elif line.startswith(RESTART_MARKER):
                    log("kill drill: restarting pmemd")
                    result["restarted"] = daemon.start(min(deadline, time.monotonic() + 180))
        if not domain_exists(daemon.domid):
            return None
        time.sleep(POLL)
    result["error"] = "timeout"
    ctx = sh("/usr/lib/xen-4.17/bin/xenctx", "-a", str(daemon.domid), "0", timeout=60)
    result["vcpu0"] = (ctx.stdout + ctx.stderr)[-3000:]  # where the guest is stuck
    return 124


def check_backing(boot: dict[str, Any], args: str) -> dict[str, Any]:
    """The guest just flushed HEX at guest physical SPA: read the backing file there, now."""
    from pmemd.config import load

    spa_text, hex_data = args.split()
    spa, data = int(spa_text, 0), bytes.fromhex(hex_data)
    for d in load(boot["pmemd_config"]).nvdimms:
        if d.address <= spa < d.end:
            with open(d.backing, "rb") as f:
                f.seek(spa - d.address)
                found = f.read(len(data))
            out = {"spa": hex(spa), "backing": str(d.backing), "offset": spa - d.address, "ok": found == data}
            log(f"check-backing: {out}")
            return out
    return {"spa": hex(spa), "ok": False, "error": "no NVDIMM at this address"}


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    results = []
    for boot in plan["boots"]:
        results.append(run_boot(plan, boot))
    Path(plan["results"]).write_text(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
