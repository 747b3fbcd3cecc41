"""The daemon's readiness key: initialising -> running (or error + error-code), guest read-only,
removed on a clean exit; and each publication refusal reported there."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator

import pytest
import trio

from pmemd.daemon import serve
from pmemd.daemon import steps as daemon
from pmemd.daemon.dmacpi import Buffer, DmAcpiError, dm_acpi_path
from pmemd.daemon.state_key import error_code_path, state_dir, state_key_path, wait_state
from pmemd.xenstore import Access, AccessDeniedError, NoEntryError, Perm
from tests.harness.host import GUEST, Host, InProcessDaemon
from tests.harness.xenstore_tools import require_xenstore_tools, tool, tool_env

STATE = state_key_path(GUEST)
ERROR_CODE = error_code_path(GUEST)
ROOT = dm_acpi_path(GUEST)


async def read(host: Host, path: str) -> bytes:
    return host.store.read(path)


async def test_state_is_running_once_the_daemon_has_started(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    d = await host.start_daemon(cfg)
    assert await read(host, STATE) == b"running"
    assert not host.store.exists(ERROR_CODE)
    assert {"ioreq-server", "publish-tables"} <= set(d.guest.completed)
    await d.stop()


async def test_state_is_initialising_while_steps_are_still_being_set_up(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    reached, release = trio.Event(), trio.Event()

    @contextlib.asynccontextmanager
    async def slow_step(guest: daemon.Guest) -> AsyncIterator[None]:
        reached.set()
        await release.wait()
        yield

    index = [name for name, _ in serve.STEPS].index("ioreq-server")
    # serve_guest walks the list it imported, so that is the one to patch.
    monkeypatch.setattr(serve, "STEPS", [*serve.STEPS[:index], ("slow", slow_step), *serve.STEPS[index:]])
    started: list[InProcessDaemon] = []

    async def start() -> None:
        started.append(await host.start_daemon(cfg))

    host.nursery.start_soon(start)
    with trio.fail_after(10):
        await reached.wait()
    assert await read(host, STATE) == b"initialising"
    release.set()
    with trio.fail_after(10):
        assert await wait_state(await host.client(), GUEST) == "running"
    for running in started:
        await running.stop()


async def test_a_clean_exit_removes_the_keys(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    d = await host.start_daemon(cfg)
    await d.stop()
    assert not host.store.exists(state_dir(GUEST))
    assert sorted(host.store.directory(ROOT)) == ["address", "length"]


async def test_the_guest_can_read_but_not_write_the_state_key(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    d = await host.start_daemon(cfg)
    guest = await host.client(host.guest_xs_sock)
    assert await guest.read(STATE) == b"running"
    for attempt in (guest.write(STATE, "running"), guest.write(ERROR_CODE, "none"), guest.rm(state_dir(GUEST))):
        with pytest.raises(AccessDeniedError):
            await attempt
    assert host.store.get_perms(STATE) == [Perm(0, Access.NONE), Perm(GUEST, Access.READ)]
    await d.stop()


async def test_a_failed_step_leaves_error_and_the_step_s_error_code(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    host.hv.destroy_domain(host.hv.domain(GUEST))  # the ioreq server cannot be created
    await host.failed_daemon(cfg)
    assert await read(host, STATE) == b"error"
    assert (await read(host, ERROR_CODE)).endswith(b"-failed")


@pytest.mark.parametrize(("buffer", "code"), [
    (Buffer(0x3FFF000, 0x100), "dm-acpi-too-small"),
    (Buffer(1 << 32, 0x1000), "dm-acpi-above-4g"),
    (Buffer(64 << 20, 0x1000), "dm-acpi-not-ram"),
])
async def test_a_refused_buffer_is_reported_as_error_with_its_code(host: Host, buffer: Buffer, code: str) -> None:
    cfg = host.config()
    await host.create_domain(cfg, buffer)
    error = await host.failed_daemon(cfg)
    assert isinstance(error, DmAcpiError) and error.code == code
    assert (await read(host, STATE), await read(host, ERROR_CODE)) == (b"error", code.encode())
    assert sorted(host.store.directory(ROOT)) == ["address", "length"]


async def test_too_many_dm_acpi_entries_are_reported_as_error(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    for i in range(13):  # another device model's entries: with ours, 17
        host.store.write(f"{ROOT}/X{i:03}/type", "0")
    await host.failed_daemon(cfg)
    assert await read(host, ERROR_CODE) == b"dm-acpi-too-many"


async def test_a_missing_buffer_is_reported_as_error(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    host.store.rm(ROOT)
    await host.failed_daemon(cfg)
    assert await read(host, ERROR_CODE) == b"dm-acpi-missing"


async def test_a_configured_buffer_smaller_than_the_tables_is_reported(host: Host) -> None:
    cfg = host.config(nvdimms=8, dm_acpi_size="4K")
    await host.create_domain(cfg)
    await host.failed_daemon(cfg)
    assert await read(host, ERROR_CODE) == b"dm-acpi-too-small"


async def test_a_restart_after_an_error_clears_the_error_code(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    host.store.write(f"{ROOT}/length", "0x10")
    await host.failed_daemon(cfg)
    host.store.write(f"{ROOT}/length", "0x1000")
    d = await host.start_daemon(cfg)
    assert await read(host, STATE) == b"running"
    with pytest.raises(NoEntryError):
        host.store.read(ERROR_CODE)
    await d.stop()


async def test_an_embedded_xenstore_keeps_the_state_key_to_itself_and_publishes_nothing(host: Host) -> None:
    cfg = host.config(xenstore="embedded")
    await host.create_domain(cfg)
    d = await host.start_daemon(cfg)
    assert d.guest.xenstore is not None and d.guest.publication is None
    assert await d.guest.xenstore.read(STATE) == b"running"
    assert not host.store.exists(state_dir(GUEST))  # the toolstack's xenstored saw nothing
    await d.stop()


async def test_xenstore_read_sees_the_state_the_daemon_wrote(host: Host) -> None:
    require_xenstore_tools()
    cfg = host.config()
    await host.create_domain(cfg)
    d = await host.start_daemon(cfg)
    assert (await tool(host.guest_xs_sock, "xenstore-read", STATE)).stdout == b"running\n"
    await d.stop()


async def test_xenstore_write_as_the_guest_cannot_forge_readiness(host: Host) -> None:
    require_xenstore_tools()
    cfg = host.config()
    await host.create_domain(cfg)
    host.store.write(STATE, "initialising")
    host.store.set_perms(state_dir(GUEST), [Perm(0, Access.NONE), Perm(GUEST, Access.READ)])
    host.store.set_perms(STATE, [Perm(0, Access.NONE), Perm(GUEST, Access.READ)])
    result = await tool(host.guest_xs_sock, "xenstore-write", STATE, "running", check=False)
    assert result.returncode != 0 and await read(host, STATE) == b"initialising"


async def test_xenstore_watch_sees_the_state_key_go_on_a_clean_exit(host: Host) -> None:
    require_xenstore_tools()
    cfg = host.config()
    await host.create_domain(cfg)
    d = await host.start_daemon(cfg)
    watcher = await trio.lowlevel.open_process(
        ["xenstore-watch", "-n", "2", STATE], env=tool_env(host.xs_sock), stdout=subprocess.PIPE)
    try:
        assert watcher.stdout is not None
        lines = b""
        with trio.fail_after(10):
            while lines.count(b"\n") < 1:  # the registration event: the watch is in place
                lines += await watcher.stdout.receive_some()
            await d.stop()
            while chunk := await watcher.stdout.receive_some():
                lines += chunk
            assert await watcher.wait() == 0
    finally:
        watcher.kill()
    assert [line.split()[0] for line in lines.decode().splitlines()] == [STATE, STATE]
    assert not host.store.exists(STATE)
