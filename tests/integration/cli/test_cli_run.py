"""`pmemd run`'s command line: bad usage exits 2, bad values exit 1 with one line; flags override the config."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from pmemd.process.lifecycle import SystemdNotifier
from tests.harness.config import MiB, write_config
from tests.harness.daemon import run_cli, start_daemon


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, tmp_path / "no-hypervisor.sock")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--depriv"], "--depriv needs --uid and --gid"),
        (["--depriv", "--uid", "100"], "--depriv needs --uid and --gid"),
        (["--uid", "100", "--gid", "100"], "--uid, --gid and --chroot only go with --depriv"),
        (["--chroot", "/"], "--uid, --gid and --chroot only go with --depriv"),
        (["--domain", "seven"], "argument --domain: invalid int value: 'seven'"),
        (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
async def test_bad_usage_exits_2_naming_the_problem(config, flags, message):
    result = await run_cli("run", "--config", str(config), *flags)
    assert result.returncode == 2
    assert message in result.stderr.decode().splitlines()[-1]


async def test_a_missing_config_flag_is_bad_usage():
    result = await run_cli("run")
    assert result.returncode == 2
    assert "--config" in result.stderr.decode().splitlines()[-1]


def one_line(result) -> str:
    (line,) = result.stderr.decode().splitlines()
    return line


async def test_a_missing_config_file_exits_1_with_one_line(tmp_path):
    result = await run_cli("run", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert "absent.toml" in one_line(result)


async def test_a_domain_id_out_of_range_exits_1_naming_the_field(config):
    result = await run_cli("run", "--config", str(config), "--domain", "0")
    assert result.returncode == 1
    assert one_line(result).startswith("pmemd: domid:")


async def test_a_missing_resume_file_exits_1(config, tmp_path):
    result = await run_cli("run", "--config", str(config), "--resume", str(tmp_path / "state.sav"))
    assert result.returncode == 1
    assert one_line(result) == f"pmemd: --resume {tmp_path / 'state.sav'}: no such file"


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid check runs only as root")
async def test_depriv_to_root_is_refused(config):
    result = await run_cli("run", "--config", str(config), "--depriv", "--uid", "0", "--gid", "0")
    assert result.returncode == 1
    assert "unprivileged" in one_line(result)


@pytest.mark.skipif(os.geteuid() != 0, reason="the chroot check runs only as root")
async def test_depriv_into_a_missing_chroot_is_refused(config, tmp_path):
    result = await run_cli("run", "--config", str(config), "--depriv", "--uid", "65534", "--gid", "65534",
                           "--chroot", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert one_line(result) == f"pmemd: --chroot {tmp_path / 'nowhere'} is not a directory"


async def test_a_pidfile_in_a_missing_directory_exits_1(config, tmp_path):
    result = await run_cli("run", "--config", str(config), "--pidfile", str(tmp_path / "no" / "d.pid"))
    assert result.returncode == 1
    assert one_line(result).startswith(f"pmemd: cannot create pidfile {tmp_path / 'no' / 'd.pid'}")


async def test_domain_and_hypervisor_flags_override_the_config(sim, config, tmp_path):
    await sim.create_domain(11, vcpus=2, lowmem=64 * MiB, unpause=False)
    with start_daemon(tmp_path, "--config", str(config), "--domain", "11", "--hypervisor", str(sim.path)) as d:
        await d.ready()
        assert sim.hv.domains[11].info()["ioreq_servers"] == [0]
        d.terminate()
        assert await d.wait() == 0
    first = json.loads(d.log.text().splitlines()[0])
    assert first["domid"] == 11


async def test_ready_is_sent_over_an_abstract_notify_socket():
    name = f"pmemd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        notifier = SystemdNotifier("@" + name)
        notifier.ready()
        notifier.stopping()
        notifier.close()
        assert listener.recv(100) == f"READY=1\nMAINPID={os.getpid()}".encode()
        assert listener.recv(100) == b"STOPPING=1"


def test_without_notify_socket_readiness_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    notifier.ready()
    assert notifier.sock is None


async def test_qmp_health_reports_the_running_daemon(sim, tmp_path):
    from pmemd.daemon.steps import STEPS

    if "qmp" not in dict(STEPS):
        pytest.skip("the daemon has no QMP step yet")
    await sim.create_domain(9, vcpus=2, lowmem=64 * MiB, unpause=False)
    config = write_config(tmp_path, sim.path)
    with start_daemon(tmp_path, "--config", str(config)) as daemon:
        await daemon.ready()
        result = await run_cli("qmp-health", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] in ("running", "prelaunch", "paused")
        daemon.terminate()
        assert await daemon.wait() == 0


async def test_qmp_health_without_a_daemon_exits_1_with_one_line(tmp_path):
    result = await run_cli("qmp-health", "--socket", str(tmp_path / "qmp.sock"))
    assert result.returncode == 1
    assert one_line(result).startswith(f"pmemd: qmp-health {tmp_path / 'qmp.sock'}: ")
