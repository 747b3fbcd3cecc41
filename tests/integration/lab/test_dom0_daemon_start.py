"""The nested lab's dom0 driver starting pmemd (`pmemd.lab.dom0.Daemon.start`), against the
embedded xenstored through Debian's xenstore-read, with a stand-in daemon that writes the state
key the way pmemd does (`initialising`, then `running` or `error`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from pmemd.lab import dom0
from pmemd.xenstored.server import Store, serve_xenstored
from tests.harness.xenstore_tools import require_xenstore_tools

DOMID = 7
STATE = f"/local/domain/{DOMID}/pmemd/state"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xs", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
async def store(nursery: trio.Nursery, sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    require_xenstore_tools()
    shared = Store()
    await nursery.start(partial(serve_xenstored, str(sock_dir / "dom0"), store=shared))
    monkeypatch.setenv("XENSTORED_PATH", str(sock_dir / "dom0"))
    monkeypatch.setattr(dom0, "POLL", 0.05)
    return shared


def stand_in(tmp_path: Path, *states: str) -> dom0.Daemon:
    """A Daemon whose command writes `states` to the state key, 0.3 s apart, then stays up."""
    steps = "".join(f"sleep 0.3; xenstore-write {STATE} {s}; " for s in states)
    daemon = dom0.Daemon({"python": "python3"}, {"pmemd_config": "unused", "daemon_log": str(tmp_path / "log")},
                         DOMID)
    daemon.cmd = ["sh", "-c", f"{steps}exec sleep 30"]
    return daemon


async def start(daemon: dom0.Daemon) -> bool:
    try:
        return await trio.to_thread.run_sync(daemon.start, time.monotonic() + 15)
    finally:
        daemon.kill()


async def test_an_error_left_by_pmemd_release_is_not_the_new_daemons_failure(store: Store, tmp_path: Path) -> None:
    store.write(STATE, "error")  # `pmemd release` after the kill drill's SIGKILL
    assert await start(stand_in(tmp_path, "initialising", "running")) is True


async def test_an_error_the_new_daemon_writes_is_its_failure(store: Store, tmp_path: Path) -> None:
    store.write(STATE, "error")
    assert await start(stand_in(tmp_path, "initialising", "error")) is False


async def test_a_first_start_waits_for_running(store: Store, tmp_path: Path) -> None:
    assert await start(stand_in(tmp_path, "initialising", "running")) is True
