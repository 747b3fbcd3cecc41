"""`--depriv` (run as root): the daemon ends setup as an unprivileged, chrooted, capability-less
process that still answers the guest and still shuts down cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.config import MiB, write_config
from tests.harness.daemon import proc_status, start_daemon
from tests.harness.guest_script import run_script_async

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="deprivileging needs the test to run as root")

DOMID = 9
NOBODY = 65534
LABEL_OFFSET = (0x40).to_bytes(4, "little")


@pytest.fixture
async def deprivileged(sim, tmp_path: Path):
    """A daemon started as root with --depriv --uid/--gid nobody --chroot <empty dir>, ready."""
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB, unpause=False)
    config = write_config(tmp_path, sim.path, domid=DOMID)
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    with start_daemon(tmp_path, "--config", str(config), "--depriv", "--uid", str(NOBODY),
                            "--gid", str(NOBODY), "--chroot", str(root)) as daemon:
        await daemon.ready()
        sim.hv.domains[DOMID].unpause()
        yield daemon, config, root


async def test_uid_and_gid_are_dropped_everywhere(deprivileged):
    daemon, _, _ = deprivileged
    status = proc_status(daemon.pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4  # real, effective, saved, filesystem
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"].split() == [str(NOBODY)]


async def test_no_capability_can_come_back(deprivileged):
    daemon, _, _ = deprivileged
    status = proc_status(daemon.pid)
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"] == "1"


async def test_the_process_is_confined_to_its_chroot(deprivileged):
    daemon, _, root = deprivileged
    assert os.readlink(f"/proc/{daemon.pid}/root") == str(root)


async def test_it_still_answers_scripted_calls_including_label_writes(deprivileged):
    daemon, config, _ = deprivileged
    block = bytes(range(32))
    script = [
        {"dimm": 0, "function": 4},
        {"dimm": 0, "function": 6, "arg3": (LABEL_OFFSET + len(block).to_bytes(4, "little") + block).hex()},
        {"dimm": 0, "function": 5, "arg3": (LABEL_OFFSET + len(block).to_bytes(4, "little")).hex()},
    ]
    size, write, read = (await run_script_async(config, script)).results
    assert size["status"] == write["status"] == read["status"] == 0
    assert bytes.fromhex(read["out"])[4:] == block


async def test_it_still_shuts_down_cleanly_on_sigterm(deprivileged, sim):
    daemon, _, _ = deprivileged
    daemon.terminate()
    assert await daemon.wait() == 0
    assert sim.hv.domains[DOMID].info()["ioreq_servers"] == []
    events = daemon.log.events()
    assert events.index("privileges dropped") < events.index("running")


async def test_a_clean_stop_after_depriv_saves_the_state_so_the_next_start_counts_no_dirty_shutdown(
        deprivileged, tmp_path):
    """The state file is written through descriptors opened before root was dropped."""
    daemon, config, _ = deprivileged
    daemon.terminate()
    assert await daemon.wait() == 0
    assert "guest state saved" in daemon.log.events()
    with start_daemon(tmp_path, "--config", str(config), name="restarted") as restarted:
        await restarted.ready()
        restarted.terminate()
        assert await restarted.wait() == 0
    assert "previous daemon did not stop cleanly: dirty shutdown counted" not in restarted.log.events()
