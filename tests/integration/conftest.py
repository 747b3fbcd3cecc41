"""Fixtures for integration tests: the simulator in this trio run (`sim`) or in its own process
(`sim_process`), and a whole simulated host in this trio run (`host`) or as processes
(`process_host`, one per test module). The classes are in tests/harness/host.py."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from pmemd.sim.hvmloader import attach
from pmemd.sim.hypervisor import serve_hypervisor
from pmemd.xenstored.server import serve_xenstored
from tests.harness.daemon import start_sim
from tests.harness.host import GUEST, Host, ProcessHost, Sim


@pytest.fixture
async def sim(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Sim]:
    """The simulator served in this trio run; `sim.hv` is its state, for inspection."""
    path = tmp_path / "hv.sock"
    hv = await nursery.start(partial(serve_hypervisor, path))
    sim = Sim(path, hv)
    yield sim
    await sim.aclose()


@pytest.fixture
async def sim_process(tmp_path: Path) -> AsyncIterator[Sim]:
    """The simulator in its own process (`python -m pmemd.sim.hypervisor`), ready to use."""
    path = tmp_path / "hv.sock"
    with start_sim(str(path), command=(sys.executable, "-m", "pmemd.sim.hypervisor")):
        sim = Sim(path, None)
        yield sim
        await sim.aclose()


@pytest.fixture
async def host(nursery: trio.Nursery) -> AsyncIterator[Host]:
    """Hypervisor, xenstored and hvmloader in this trio run (see `Host`)."""
    directory = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))  # short: Unix socket paths
    try:
        hv = await nursery.start(partial(serve_hypervisor, str(directory / "hv")))
        store = await nursery.start(partial(serve_xenstored, str(directory / "xs")))
        await nursery.start(partial(serve_xenstored, str(directory / "xs-guest"), store=store, domid=GUEST))
        yield Host(directory, hv, store, attach(hv, store, directory / "acpi"), nursery)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def process_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessHost]:
    """`pmemd sim` and the daemons started on it, as processes: one host for a whole test module."""
    host = ProcessHost(tmp_path_factory.mktemp("process-host")).start()
    try:
        yield host
    finally:
        host.close()
