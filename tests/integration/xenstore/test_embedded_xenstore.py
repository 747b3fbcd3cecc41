"""`[xen] xenstore = "embedded"`: the daemon runs a private xenstored in-process.

Its state keys are there for Debian's real clients to read; with no toolstack sharing it,
nothing is published in dm-acpi; it goes away with the daemon.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.config import MiB, write_config
from tests.harness.daemon import start_daemon
from tests.harness.xenstore_tools import require_xenstore_tools, tool

DOMID = 9


@pytest.fixture
async def daemon_socket(sim, tmp_path: Path):
    require_xenstore_tools()
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB, unpause=False)
    config = write_config(tmp_path, sim.path, domid=DOMID)
    with start_daemon(tmp_path, "--config", str(config)) as daemon:
        await daemon.ready()
        lines = [json.loads(line) for line in daemon.log.text().splitlines() if line.startswith("{")]
        (socket,) = [e["socket"] for e in lines if e.get("event") == "embedded xenstored"]
        yield socket, daemon


async def test_embedded_xenstored_holds_the_running_state_key(daemon_socket) -> None:
    socket, _ = daemon_socket
    proc = await tool(socket, "xenstore-read", f"/local/domain/{DOMID}/pmemd/state", check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, b"running")


async def test_embedded_xenstored_has_no_dm_acpi_entries(daemon_socket) -> None:
    socket, _ = daemon_socket
    proc = await tool(socket, "xenstore-ls", f"/local/domain/{DOMID}", check=False)
    assert b"dm-acpi" not in proc.stdout


async def test_embedded_xenstored_goes_away_with_the_daemon(daemon_socket) -> None:
    socket, daemon = daemon_socket
    daemon.terminate()
    assert await daemon.wait() == 0
    assert not Path(socket).exists()
