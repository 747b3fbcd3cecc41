"""Two complete stacks on one machine at once — simulator, `pmemd domain`, `pmemd run` with a
pidfile, QMP socket, state file, embedded xenstored and save file, and a guest script — with
different domids and one shared runtime, temporary and home directory: neither sees the
other's sockets, pidfiles, state or labels. And two `pmemd demo` runs at once keep their logs apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.harness.config import guest_config, nvdimm, write_toml
from tests.harness.daemon import run_cli, start_daemon, start_sim

PMEMD = [sys.executable, "-m", "pmemd.cli"]
DOMIDS = (21, 22)
LABEL_SIZE = 128 << 10


@pytest.fixture
def machine() -> Iterator[Path]:
    """What the two stacks share: XDG_RUNTIME_DIR, TMPDIR and HOME (short paths: Unix sockets)."""
    root = Path(tempfile.mkdtemp(prefix="pm2", dir="/tmp"))
    for name in ("run", "tmp", "home"):
        (root / name).mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def env_for(machine: Path) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": str(machine / "run"), "TMPDIR": str(machine / "tmp"),
            "HOME": str(machine / "home")}


def write_config(machine: Path, domid: int) -> Path:
    stack = machine / f"dom{domid}"
    stack.mkdir()
    dimm = nvdimm(stack / "nv0.img", (2 << 20) + LABEL_SIZE, label_size="128K")
    raw = guest_config(domid, stack / "hv", xenstore="embedded", qmp=machine / "run" / f"qmp-pmemd-{domid}",
                       nvdimms=[dimm], dsm={"state_file": str(machine / "run" / f"pmemd-{domid}.state")})
    return write_toml(stack / "guest.toml", raw)


def label_script(domid: int) -> tuple[str, bytes]:
    data = f"dom{domid:05d}".encode()  # 8 bytes, one per stack
    write = data.hex()
    lines = [{"dimm": 0, "function": 6, "arg3": (0).to_bytes(4, "little").hex() + (8).to_bytes(4, "little").hex() + write},
             {"dimm": 0, "function": 5, "arg3": (0).to_bytes(4, "little").hex() + (8).to_bytes(4, "little").hex()}]
    return "".join(json.dumps(line) + "\n" for line in lines), data


async def pmemd(env: dict[str, str], *argv: str, stdin: bytes = b"") -> str:
    result = await run_cli(*argv, stdin=stdin, env=env)
    assert result.returncode == 0, f"pmemd {' '.join(argv)}: {result.stderr.decode()[-2000:]}"
    return result.stdout.decode()


async def run_stack(machine: Path, domid: int, results: dict[int, dict]) -> None:
    env, config = env_for(machine), write_config(machine, domid)
    stack = config.parent
    pidfile, save = machine / "run" / f"pmemd-{domid}.pid", stack / "saved"
    with start_sim("--socket", str(stack / "hv"), env=env):
        await pmemd(env, "domain", "create", "--config", str(config))
        with start_daemon(stack, "--config", str(config), "--pidfile", str(pidfile), "--save", str(save),
                          env=env) as daemon:
            await daemon.ready()
            await pmemd(env, "qmp-health", "--config", str(config))  # its QMP socket answers
            pid = int(pidfile.read_text())
            await pmemd(env, "domain", "unpause", "--config", str(config))
            script, data = label_script(domid)
            out = await pmemd(env, "guest", "--config", str(config), "-", stdin=script.encode())
            daemon.terminate()
            code = await daemon.wait()
    results[domid] = {"pid": pid, "daemon_pid": daemon.pid, "exit": code, "calls": [json.loads(x) for x in out.splitlines()],
                      "data": data, "label_area": (stack / "nv0.img").read_bytes()[2 << 20:(2 << 20) + 8],
                      "saved": save.exists(), "state_file": (machine / "run" / f"pmemd-{domid}.state").exists()}


@pytest.mark.timeout(150)
async def test_two_stacks_with_different_domids_run_at_once_without_interfering(machine: Path) -> None:
    results: dict[int, dict] = {}
    async with trio.open_nursery() as nursery:
        for domid in DOMIDS:
            nursery.start_soon(run_stack, machine, domid, results)
    for domid in DOMIDS:
        r = results[domid]
        assert (r["exit"], r["pid"]) == (0, r["daemon_pid"])
        assert [c.get("status") for c in r["calls"]] == [0, 0]
        assert bytes.fromhex(r["calls"][1]["out"])[4:] == r["data"]
        assert r["label_area"] == r["data"]
        assert r["saved"] and r["state_file"]
        assert (machine / "run" / f"pmemd-{domid}.state.firmware").exists()  # one firmware file per guest
    kept = (".state", ".state.firmware")  # each guest's state and its DIMMs' firmware outlive the daemon
    assert sorted(p.name for p in (machine / "run").iterdir() if not p.name.endswith(kept)) == []


@pytest.mark.timeout(150)
async def test_two_demos_at_once_each_succeed_and_keep_their_own_log(machine: Path) -> None:
    outputs: list[str] = []

    async def demo() -> None:
        outputs.append(await pmemd(env_for(machine), "demo"))

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(demo)
    logs = [re.search(r"log in (\S+)", out).group(1) for out in outputs]  # type: ignore[union-attr]
    assert len(set(logs)) == 2
    assert all("label read back: status 0 (success), matches" in out for out in outputs)
