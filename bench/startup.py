"""Start-up cost of a per-guest device model: pmemd next to QEMU, side by side.

For each of `--runs` starts it prints the median of:
  - exec → QMP greeting: from fork/exec until a client connected to the QMP socket reads
    the greeting (connect retried every 0.5 ms);
  - exec → running: pmemd's READY=1 over $NOTIFY_SOCKET (sent once every setup step is in,
    the state key is "running"); QEMU with -S has no equivalent (its greeting is the point
    where a toolstack may talk to it);
  - RSS: VmRSS of the process once ready (and VmHWM, the peak), from /proc/PID/status.
pmemd is measured twice: from this venv (`pip install -e`, whose import finder costs every
Python start ~10 ms) and in the layout a wheel install gives (a throw-away venv whose
site-packages lists this repository and this venv's dependencies as plain paths), started
through the console script pip writes for it — what a toolstack execs.
`pmemd run` binds its QMP socket and greets clients before it imports the daemon
(`pmemd.qmp.early`), so the greeting column is the cost of starting Python plus that path.
Both get the QMP path on the command line, as libxl gives it (`--qmp`, QEMU's `-qmp`);
from this venv pmemd starts as `python -m pmemd` (same entry, `pmemd.process.startup.main`; runpy adds
~3 ms). pmemd runs against `pmemd sim` (started once, not timed) with one 256 MiB + 2 MiB-label
NVDIMM; QEMU gets the same backing file: `-machine pc,nvdimm=on -m 512M,slots=2,maxmem=4G
-object memory-backend-file,... -device nvdimm,label-size=2M -S -qmp unix:...`.
QEMU is skipped (and said so) when qemu-system-x86_64 is not installed.

Usage: python bench/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
DOMID = 5
PMEM = 256 * MiB
LABELS = 2 * MiB
PMEMD = [sys.executable, "-m", "pmemd.cli"]
REPO = Path(__file__).resolve().parent.parent


def installed_python(work: Path) -> str:
    """A venv whose sys.path holds the repository and this venv's site-packages as plain
    directories, as a wheel install would: no editable-install finder runs at start-up."""
    import site
    import venv

    target = work / "installed"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "pmemd-bench.pth").write_text("\n".join([str(REPO), *site.getsitepackages()]) + "\n")
    # The console script pip writes for `pmemd = "pmemd.process.startup:main"`: what a toolstack execs.
    script = target / "bin" / "pmemd"
    script.write_text(f"#!{python}\nimport sys\nfrom pmemd.process.startup import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return str(script)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def wait_greeting(path: Path, proc: subprocess.Popen, deadline: float) -> float:
    """Connect (retrying) and read the QMP greeting; returns the time it arrived."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before its QMP greeting")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(deadline - time.monotonic())
                sock.connect(str(path))
                greeting = sock.makefile("rb").readline()
                if b'"QMP"' in greeting:
                    return time.monotonic()
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.0005)
    raise TimeoutError("no QMP greeting")


def write_config(work: Path, hv: Path, qmp: Path, backing: Path, xenstore: Path) -> Path:
    """A production-shaped guest: the toolstack's xenstored (the simulator's), not an embedded one."""
    path = work / "guest.toml"
    path.write_text(f"""domid = {DOMID}
[guest]
lowmem = "512M"
vcpus = 2
[dsm]
mode = "mmio"
[xen]
hypervisor = "{hv}"
xenstore = "{xenstore}"
[qmp]
socket = "{qmp}"
[[nvdimm]]
backing = "{backing}"
size = "{(PMEM + LABELS) // MiB}M"
label_size = "{LABELS // MiB}M"
slot = 0
node = 0
address = "auto"
""")
    return path


def pmemd_once(work: Path, config: Path, qmp: Path, program: str | None = None) -> dict[str, float]:
    """One start of `pmemd run` (`program`: a console script; default `python -m pmemd`)."""
    subprocess.run([*PMEMD, "domain", "create", "--config", str(config)], check=True, capture_output=True)
    notify_path = work / "notify"
    notify_path.unlink(missing_ok=True)
    qmp.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        start = time.monotonic()
        command = [program] if program else [sys.executable, "-m", "pmemd"]
        proc = subprocess.Popen([*command, "run", "--config", str(config), "--qmp", str(qmp)], stderr=subprocess.DEVNULL,
                                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)})
        try:
            greeting = wait_greeting(qmp, proc, start + 30)
            notify.settimeout(30)
            while b"READY=1" not in notify.recv(4096):
                pass
            ready = time.monotonic()
            rss, hwm = rss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    subprocess.run([*PMEMD, "domain", "destroy", "--config", str(config)], check=True, capture_output=True)
    return {"greeting": greeting - start, "running": ready - start, "rss": rss, "hwm": hwm}


def qemu_once(qemu: str, work: Path, backing: Path) -> dict[str, float]:
    qmp = work / "qemu.qmp"
    qmp.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(
        [qemu, "-machine", "pc,nvdimm=on", "-m", "512M,slots=2,maxmem=4G",
         "-object", f"memory-backend-file,id=mem1,share=on,mem-path={backing},size={PMEM + LABELS}",
         "-device", f"nvdimm,id=nv1,memdev=mem1,label-size={LABELS}",
         "-S", "-qmp", f"unix:{qmp},server=on,wait=off", "-display", "none", "-nodefaults", "-serial", "none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        greeting = wait_greeting(qmp, proc, start + 30)
        rss, hwm = rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return {"greeting": greeting - start, "running": float("nan"), "rss": rss, "hwm": hwm}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmemd-startup-") as tmp:
        work = Path(tmp)
        backing = work / "nv0.img"
        with open(backing, "wb") as f:
            f.truncate(PMEM + LABELS)
        hv, qmp = work / "hv.sock", work / "pmemd.qmp"
        xenstore = work / "xenstored.sock"
        config = write_config(work, hv, qmp, backing, xenstore)
        sim = subprocess.Popen([*PMEMD, "sim", "--socket", str(hv), "--xenstore", str(xenstore)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        try:
            assert sim.stdout is not None and sim.stdout.readline().strip() == b"ready"
            python = installed_python(work)
            pmemd_runs, installed_runs = [], []
            for _ in range(args.runs):  # interleaved, so load changes hit both alike
                pmemd_runs.append(pmemd_once(work, config, qmp))
                installed_runs.append(pmemd_once(work, config, qmp, python))
        finally:
            sim.terminate()
            sim.wait()
        qemu = shutil.which("qemu-system-x86_64")
        qemu_runs = [qemu_once(qemu, work, backing) for _ in range(args.runs)] if qemu else []

    print(f"start-up, median of {args.runs} runs (one 256 MiB NVDIMM + 2 MiB labels, same backing file)")
    print(f"{'':28}{'pmemd venv':>12}{'installed':>12}{'QEMU -S':>12}")
    rows = [("exec -> QMP greeting (ms)", "greeting", 1000.0), ("exec -> running (ms)", "running", 1000.0),
            ("RSS when ready (MiB)", "rss", 1 / 1024), ("peak RSS (MiB)", "hwm", 1 / 1024)]
    for label, key, scale in rows:
        ours = median(pmemd_runs, key) * scale
        installed = median(installed_runs, key) * scale
        theirs = f"{median(qemu_runs, key) * scale:12.1f}" if qemu_runs and key != "running" else f"{'-':>12}"
        print(f"{label:28}{ours:12.1f}{installed:12.1f}{theirs}")
    if not qemu_runs:
        print("QEMU: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    print(json.dumps({"pmemd": pmemd_runs, "pmemd_installed": installed_runs, "qemu": qemu_runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
