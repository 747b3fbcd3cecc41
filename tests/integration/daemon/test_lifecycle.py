"""Lifecycle: ready, SIGTERM → exit 0 with nothing left; failures at any setup step leave
nothing behind; the domain disappearing makes the daemon tear down and exit 0."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from functools import partial
from pathlib import Path

import pytest
import trio

from pmemd import config as configmod
from pmemd.daemon.guest import Guest
from pmemd.daemon.serve import serve_guest
from pmemd.daemon.steps import STEPS
from pmemd.process.pidfile import is_locked
from tests.harness.config import MiB, write_config
from tests.harness.daemon import run_cli, start_daemon
from tests.harness.guest_script import run_script_async

DOMID = 9


@pytest.fixture
async def guest_config(sim, tmp_path: Path) -> Path:
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB, unpause=False)
    return write_config(tmp_path, sim.path, domid=DOMID)


def servers(sim) -> list[int]:
    return list(sim.hv.domains[DOMID].info()["ioreq_servers"])


async def test_sigterm_after_ready_exits_0_and_leaves_nothing_behind(sim, guest_config, tmp_path):
    pid_path = tmp_path / "pmemd.pid"
    with start_daemon(tmp_path, "--config", str(guest_config), "--pidfile", str(pid_path)) as daemon:
        await daemon.ready()
        assert len(servers(sim)) == 1
        assert sim.hv.bindings, "per-vCPU event channels are bound while running"
        daemon.terminate()
        assert await daemon.wait() == 0
        assert servers(sim) == []
        assert not sim.hv.bindings
        assert not pid_path.exists()
        events = daemon.log.events()
        assert events.index("running") < events.index("shutting down") < events.index("ioreq server torn down")


async def test_the_guest_is_served_between_ready_and_sigterm(sim, guest_config, tmp_path):
    with start_daemon(tmp_path, "--config", str(guest_config)) as daemon:
        await daemon.ready()
        sim.hv.domains[DOMID].unpause()
        result = await run_cli("guest", "--config", str(guest_config), "-", stdin=b'{"dimm": 0, "function": 4}\n')
        assert b'"status": 0' in result.stdout
        daemon.terminate()
        assert await daemon.wait() == 0


async def test_pidfile_is_0600_holds_the_pid_and_stays_locked_while_running(sim, guest_config, tmp_path):
    pid_path = tmp_path / "pmemd.pid"
    with start_daemon(tmp_path, "--config", str(guest_config), "--pidfile", str(pid_path)) as daemon:
        await daemon.ready()
        assert stat.S_IMODE(pid_path.stat().st_mode) == 0o600
        assert pid_path.read_text() == f"{daemon.pid}\n"
        assert is_locked(pid_path)
        daemon.terminate()
        assert await daemon.wait() == 0
        assert not is_locked(pid_path)


async def test_a_second_daemon_on_a_held_pidfile_exits_1_with_one_line(sim, guest_config, tmp_path):
    pid_path = tmp_path / "pmemd.pid"
    with start_daemon(tmp_path, "--config", str(guest_config), "--pidfile", str(pid_path)) as first:
        await first.ready()
        second = await run_cli("run", "--config", str(guest_config), "--pidfile", str(pid_path))
        assert second.returncode == 1
        assert second.stderr.decode() == f"pmemd: pidfile {pid_path} is locked: pid {first.pid} is running\n"
        assert pid_path.read_text() == f"{first.pid}\n"
        first.terminate()
        assert await first.wait() == 0


async def test_destroying_the_domain_makes_the_daemon_tear_down_and_exit_0(sim, guest_config, tmp_path):
    pid_path = tmp_path / "pmemd.pid"
    with start_daemon(tmp_path, "--config", str(guest_config), "--pidfile", str(pid_path)) as daemon:
        await daemon.ready()
        sim.hv.destroy_domain(sim.hv.domains[DOMID])
        assert await daemon.wait() == 0
        assert "domain gone: tearing down" in daemon.log.events()
        assert not pid_path.exists()


async def test_a_domain_destroyed_while_it_is_being_served_is_noticed(sim, guest_config, tmp_path):
    """With an embedded xenstored no toolstack fires @releaseDomain: the daemon must poll."""
    with start_daemon(tmp_path, "--config", str(guest_config)) as daemon:
        await daemon.ready()
        sim.hv.domains[DOMID].unpause()
        served = await run_script_async(guest_config, [{"dimm": 0, "function": 4}])  # long past its set-up
        assert served.results[0]["status"] == 0
        sim.hv.destroy_domain(sim.hv.domains[DOMID])
        assert await daemon.wait() == 0
        assert "domain gone: tearing down" in daemon.log.events()


async def test_a_failing_setup_exits_1_with_one_line_and_leaves_nothing(sim, guest_config, tmp_path):
    (tmp_path / "nv0.img").unlink()
    pid_path = tmp_path / "pmemd.pid"
    result = await run_cli("run", "--config", str(guest_config), "--pidfile", str(pid_path))
    assert result.returncode == 1
    *log_lines, line = result.stderr.decode().splitlines()
    assert line.startswith(f"pmemd: domain {DOMID}: ") and "nv0.img" in line
    assert all(json.loads(entry)["domid"] == DOMID for entry in log_lines)  # the rest is the JSON log
    assert servers(sim) == []
    assert not pid_path.exists()


# -- failure injected at each setup step (in-process, so every resource can be inspected) ------


class InjectedFailure(Exception):
    pass


def open_fds_to(path: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                out.append(fd)
    return out


@pytest.mark.parametrize("after", [name for name, _ in STEPS])
async def test_a_failure_after_any_step_undoes_every_step_once_in_reverse(sim, guest_config, after):
    cfg = configmod.load(guest_config)
    seen: list[Guest] = []

    @contextlib.asynccontextmanager
    async def fail(guest: Guest):
        seen.append(guest)
        raise InjectedFailure(after)
        yield  # pragma: no cover

    index = [name for name, _ in STEPS].index(after)
    steps = [*STEPS[: index + 1], ("injected", fail), *STEPS[index + 1 :]]
    with pytest.raises(BaseExceptionGroup) as excinfo:
        await serve_guest(cfg, str(sim.path), steps=steps)
    assert excinfo.group_contains(InjectedFailure)
    (guest,) = seen
    assert guest.completed == []
    assert servers(sim) == []
    assert not sim.hv.bindings
    assert open_fds_to(cfg.nvdimms[0].backing) == []


async def test_cancelling_during_setup_leaves_nothing_behind(sim, guest_config):
    """SIGTERM before the daemon runs: the steps already in are undone, none is left half done."""
    cfg = configmod.load(guest_config)
    reached = trio.Event()

    @contextlib.asynccontextmanager
    async def block(guest: Guest):
        reached.set()
        await trio.sleep_forever()
        yield  # pragma: no cover

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_guest, cfg, str(sim.path), steps=[*STEPS, ("blocked", block)]))
        await reached.wait()
        assert len(servers(sim)) == 1
        nursery.cancel_scope.cancel()
    assert servers(sim) == []
    assert open_fds_to(cfg.nvdimms[0].backing) == []


# -- --save on SIGTERM, --resume on the next start ------------------------------------------------


def inject_script(address: int) -> list[dict]:
    arg = address.to_bytes(8, "little") + (4096).to_bytes(8, "little") + b"\0"
    return [{"dimm": None, "function": 7, "arg3": arg.hex()}]


def status_queries(address: int) -> list[dict]:
    """Inject status and ARS capabilities over the injected range."""
    span = (address.to_bytes(8, "little") + (4096).to_bytes(8, "little")).hex()
    return [{"dimm": None, "function": 9}, {"dimm": None, "function": 1, "arg3": span}]


async def guest_calls(config: Path, script: list[dict]) -> list[dict]:
    return (await run_script_async(config, script)).results


async def test_save_then_resume_gives_the_guest_the_same_answers(sim, guest_config, tmp_path):
    pytest.importorskip("pmemd.daemon.savefile")
    saved = tmp_path / "state.sav"
    address = configmod.load(guest_config).nvdimms[0].address
    with start_daemon(tmp_path, "--config", str(guest_config), "--save", str(saved), name="first") as first:
        await first.ready()
        sim.hv.domains[DOMID].unpause()
        (injected,) = await guest_calls(guest_config, inject_script(address))
        assert injected["status"] == 0
        before = await guest_calls(guest_config, status_queries(address))
        first.terminate()
        assert await first.wait() == 0
    assert "device state saved" in first.log.events()
    assert saved.stat().st_size > 0
    with start_daemon(tmp_path, "--config", str(guest_config), "--resume", str(saved), name="second") as second:
        await second.ready()
        after = await guest_calls(guest_config, status_queries(address))
        second.terminate()
        assert await second.wait() == 0
    assert after == before
    assert before[0]["status"] == 0
    assert bytes.fromhex(before[0]["out"])[4:8] == (1).to_bytes(4, "little")  # one injected range listed


async def test_resuming_a_corrupt_save_file_exits_1_and_leaves_nothing(sim, guest_config, tmp_path):
    pytest.importorskip("pmemd.daemon.savefile")
    bad = tmp_path / "state.sav"
    bad.write_bytes(b"PMEMDSAV" + bytes(64))
    result = await run_cli("run", "--config", str(guest_config), "--resume", str(bad))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1].startswith(f"pmemd: domain {DOMID}: SaveFileError")
    assert servers(sim) == []


def test_the_packaged_example_config_is_configs_example_toml() -> None:
    """`pmemd demo` falls back to pmemd/data/example.toml when installed from a wheel."""
    from pmemd.sim.demo import PACKAGED_CONFIG, REPO_CONFIG

    assert PACKAGED_CONFIG.read_bytes() == REPO_CONFIG.read_bytes()
