"""`pmemd run`'s start-up path: the QMP socket bound at exec greets at once, the full server
adopts it mid-negotiation, and a daemon that fails after greeting closes cleanly."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from pmemd import config as configmod
from pmemd.daemon.guest import RunOptions
from pmemd.daemon.serve import serve_guest
from pmemd.process.startup import _Deferred, defer_unused_stdlib
from pmemd.qmp.early import EarlyQmp, greeting_bytes, qmp_path_from_argv
from pmemd.qmp.protocol import Connection
from pmemd.qmp.vm_commands import version_info
from tests.harness.config import MiB, write_config

DOMID = 21


def read_message(reader) -> dict:
    line = reader.readline()
    assert line, "connection closed"
    return json.loads(line)


def test_the_early_greeting_is_byte_for_byte_the_servers() -> None:
    assert greeting_bytes() == Connection(version_info()).greeting_bytes()


def test_the_qmp_path_comes_from_the_flag_else_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('domid = 7\n[qmp]\nsocket = "/run/x.sock"\n')
    assert qmp_path_from_argv(["run", "--config", str(config), "--qmp", "/run/y.sock"]) == "/run/y.sock"
    assert qmp_path_from_argv(["run", "--config", str(config)]) == "/run/x.sock"
    config.write_text("domid = 7\n")
    assert qmp_path_from_argv(["run", f"--config={config}", "--domain", "9"]) == "/var/run/xen/qmp-pmemd-9"
    config.write_text('domid = 7\n[dsm]\ntransport = "qemu"\n')  # QEMU owns the monitor
    assert qmp_path_from_argv(["run", "--config", str(config)]) is None
    assert qmp_path_from_argv(["sim", "--config", str(config)]) is None


def test_the_early_socket_is_mode_0600_and_close_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    early = EarlyQmp.bind(path)
    assert early is not None
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        early.close()
    assert not path.exists()


def test_a_path_a_live_daemon_serves_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    first = EarlyQmp.bind(path)
    assert first is not None
    try:
        assert EarlyQmp.bind(path) is None
        assert path.exists()
    finally:
        first.close()


def test_a_deferred_module_imports_on_first_use() -> None:
    name = "colorsys"
    sys.modules.pop(name, None)
    try:
        assert defer_unused_stdlib((name,)) == [name]
        stand_in = sys.modules[name]
        assert isinstance(stand_in, _Deferred)
        import colorsys  # noqa: F401  (the import statement alone must not load it)

        assert isinstance(sys.modules[name], _Deferred)
        assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # first use: the real module, through the stand-in
        assert not isinstance(sys.modules[name], _Deferred)
    finally:
        sys.modules.pop(name, None)


async def test_a_client_greeted_before_the_daemon_is_up_negotiates_with_the_full_server(sim, tmp_path, nursery):
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB, unpause=False)
    config = configmod.load(write_config(tmp_path, sim.path, domid=DOMID, nvdimms=2))
    early = EarlyQmp.bind(config.qmp_socket)
    assert early is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(config.qmp_socket))
        early.pump()  # what every import does while the daemon starts
        reader = client.makefile("rb")
        assert read_message(reader)["QMP"]["version"] == version_info()
        client.sendall(b'{"execute": "qmp_capabilities", "id": 1}\n{"execute": "query-status", "id": 2}\n')

        await nursery.start(partial(serve_guest, config, str(sim.path), options=RunOptions(early_qmp=early)))

        replies = await trio.to_thread.run_sync(lambda: [read_message(reader), read_message(reader)])
        assert replies == [{"return": {}, "id": 1}, {"return": {"running": True, "status": "running"}, "id": 2}]


async def test_a_daemon_failing_after_its_greeting_closes_the_connection_and_removes_the_socket(tmp_path):
    """The hypervisor here is a socket the test holds: the daemon waits on it in its first
    step, is greeted meanwhile, then fails when the test hangs up."""
    hv_path = tmp_path / "hv.sock"
    config_path = write_config(tmp_path, hv_path, domid=DOMID, nvdimms=2)
    qmp_path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hv:
        hv.bind(str(hv_path))
        hv.listen(1)
        proc = subprocess.Popen([sys.executable, "-m", "pmemd", "run", "--config", str(config_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            daemon_side, _ = await trio.to_thread.run_sync(hv.accept)  # its QMP socket is bound by now
            with daemon_side, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(qmp_path))
                reader = client.makefile("rb")
                assert "QMP" in await trio.to_thread.run_sync(read_message, reader)
                daemon_side.shutdown(socket.SHUT_RDWR)  # the "hypervisor" goes away: setup fails
                assert await trio.to_thread.run_sync(reader.readline) == b""  # a clean end-of-file
            _, err = await trio.to_thread.run_sync(proc.communicate, None, 30)
            assert proc.returncode == 1 and err.decode().splitlines()[-1].startswith(f"pmemd: domain {DOMID}:")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert not qmp_path.exists()
