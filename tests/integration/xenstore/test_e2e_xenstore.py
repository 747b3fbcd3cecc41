"""End to end, as processes: `pmemd sim --xenstore --acpi-out`, `pmemd domain create`, `pmemd run`,
`pmemd domain unpause`; hvmloader's tables decode with iasl and hold the configured NVDIMMs, and
Debian's xenstore tools see exactly what the toolstack and the daemon wrote."""

from __future__ import annotations

import json
import shutil
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
from tests.harness.daemon import run_cli, start_daemon, start_sim
from tests.harness.xenstore_tools import require_xenstore_tools, tool

DOMID = 9
NVDIMMS = 3


@dataclass
class Setup:
    dir: Path
    config: Path

    @property
    def xs(self) -> str:
        return str(self.dir / "xs")


async def pmemd(*argv: str) -> dict:
    result = await run_cli(*argv)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout.decode().splitlines()[-1])


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    directory = Path(tempfile.mkdtemp(prefix="pe", dir="/tmp"))
    dimms = [nvdimm(directory / f"nv{slot}.img", "4M", slot=slot) for slot in range(NVDIMMS)]
    raw = guest_config(DOMID, directory / "hv", xenstore=directory / "xs", qmp=directory / "qmp", nvdimms=dimms)
    write_toml(directory / "guest.toml", raw)
    try:
        with start_sim("--socket", str(directory / "hv"), "--xenstore", str(directory / "xs"),
                       "--acpi-out", str(directory / "acpi")):
            yield Setup(directory, directory / "guest.toml")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_guest_boots_with_the_configured_nvdimms(setup: Setup) -> None:
    require_xenstore_tools()
    created = await pmemd("domain", "create", "--config", str(setup.config))
    with start_daemon(setup.dir, "--config", str(setup.config)) as daemon:
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

            daemon.terminate()
            assert await daemon.wait() == 0
            assert not await xs.exists(state_dir(DOMID))
