"""End to end, as processes: `pmemd sim --xenstore --acpi-out`, `pmemd domain create`, `pmemd run`,
`pmemd domain unpause`; hvmloader's tables decode with iasl and hold the configured NVDIMMs, and
Debian's xenstore tools see exactly what the toolstack and the daemon wrote."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from acpi.nfit import TYPE_SPA, parse_nfit
from pmemd.daemon.dmacpi import dm_acpi_path
from pmemd.daemon.state_key import state_dir, state_key_path, wait_state
from pmemd.xenstore import open_client
from tests.harness.acpica import decompile
from tests.harness.config import guest_config, nvdimm, write_toml
from tests.harness.xs_host import require_xenstore_tools, tool

DOMID = 9
NVDIMMS = 3
PMEMD = [sys.executable, "-m", "pmemd.cli"]


@dataclass
class Setup:
    dir: Path
    config: Path

    @property
    def xs(self) -> str:
        return str(self.dir / "xs")


async def pmemd(*argv: str) -> dict:
    with trio.fail_after(30):
        result = await trio.run_process([*PMEMD, *argv], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout.decode().splitlines()[-1])


async def wait_ready(proc: trio.Process) -> None:
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(30):
        while b"ready\n" not in buf:
            chunk = await proc.stdout.receive_some()
            assert chunk, "pmemd sim exited before it was ready"
            buf += chunk


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    directory = Path(tempfile.mkdtemp(prefix="pe", dir="/tmp"))
    dimms = [nvdimm(directory / f"nv{slot}.img", "4M", slot=slot) for slot in range(NVDIMMS)]
    write_toml(directory / "guest.toml", guest_config(DOMID, directory / "hv", xenstore=directory / "xs", qmp=directory / "qmp",
                                               nvdimms=dimms))
    sim = await trio.lowlevel.open_process(
        [*PMEMD, "sim", "--socket", str(directory / "hv"), "--xenstore", str(directory / "xs"),
         "--acpi-out", str(directory / "acpi")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        await wait_ready(sim)
        yield Setup(directory, directory / "guest.toml")
    finally:
        sim.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await sim.wait()
        sim.kill()
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_guest_boots_with_the_configured_nvdimms(setup: Setup) -> None:
    require_xenstore_tools()
    created = await pmemd("domain", "create", "--config", str(setup.config))
    daemon = await trio.lowlevel.open_process(
        [*PMEMD, "run", "--config", str(setup.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with open_client(setup.xs) as xs:
            with trio.fail_after(30):
                assert await wait_state(xs, DOMID) == "running"

            # What the toolstack and the daemon wrote, as Debian's xenstore-ls sees it.
            root = dm_acpi_path(DOMID)
            listing = (await tool(setup.xs, "xenstore-ls", "-f", root)).stdout.decode().splitlines()
            assert listing[:2] == [f'{root}/address = "{created["dm_acpi"]["address"]}"',
                                   f'{root}/length = "{created["dm_acpi"]["length"]}"']
            assert [line.split(" = ")[0] for line in listing[2:]] == [
                f"{root}/{name}{key}" for name in ("NFIT", "NVDR", "NVEV") for key in ("", "/type", "/offset", "/length")]
            assert (await tool(setup.xs, "xenstore-read", state_key_path(DOMID))).stdout == b"running\n"

            assert (await pmemd("domain", "unpause", "--config", str(setup.config)))["state"] == "running"
            out = setup.dir / "acpi" / f"dom{DOMID}"
            summary = json.loads((out / "hvmloader.json").read_text())
            assert ([t["entry"] for t in summary["loaded"]], summary["skipped"]) == (["NFIT", "NVDR", "NVEV"], [])
            nfit_dsl = decompile((out / "NFIT.dat").read_bytes(), setup.dir, "nfit")
            ssdt_dsl = decompile((out / "NVDR.dat").read_bytes(), setup.dir, "ssdt")
            assert "[NFIT]" in nfit_dsl
            structures = parse_nfit((out / "NFIT.dat").read_bytes())
            assert sum(s.header.type == TYPE_SPA for s in structures) == NVDIMMS
            assert [f"Device (NV{slot:02X})" in ssdt_dsl for slot in range(NVDIMMS)] == [True] * NVDIMMS

            daemon.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await daemon.wait() == 0
            assert not await xs.exists(state_dir(DOMID))
    finally:
        daemon.kill()
