"""Debian's real xenstore-utils (C libxenstore) against the embedded xenstored.

libxenstore honours ``XENSTORED_PATH``, connects to the Unix socket and sends requests at once
(no greeting); most tools wrap their request in a transaction. Each test checks that the C tools
and our trio client see exactly the same tree.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from pmemd.xenstore import Access, NoEntryError, Perm, XenstoreClient, open_client
from pmemd.xenstored.server import Store, serve_xenstored
from tests.harness import xenstore_tools
from tests.harness.xenstore_tools import missing_xenstore_tools, tool_env

GUEST = 5

pytestmark = pytest.mark.skipif(bool(missing_xenstore_tools()),
                                reason="Debian xenstore-utils not installed (./dev test installs it)")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xs", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
async def store(nursery: trio.Nursery, sock_dir: Path) -> Store:
    """One store behind two sockets: dom0's, and one whose connections act as guest 5."""
    shared = Store()
    await nursery.start(partial(serve_xenstored, str(sock_dir / "dom0"), store=shared))
    await nursery.start(
        partial(serve_xenstored, str(sock_dir / "guest"), store=shared, domid=GUEST))
    shared.mkdir(f"/local/domain/{GUEST}")
    shared.set_perms(f"/local/domain/{GUEST}", [Perm(GUEST, Access.NONE)])
    return shared


@pytest.fixture
async def xs(store: Store, sock_dir: Path) -> AsyncIterator[XenstoreClient]:
    async with open_client(str(sock_dir / "dom0")) as client:
        yield client


async def tool(sock_dir: Path, *argv: str, socket: str = "dom0", check: bool = True) -> trio.Process:
    """One tool against the socket called `socket` in `sock_dir`."""
    return await xenstore_tools.tool(str(sock_dir / socket), *argv, check=check)


async def test_xenstore_read_sees_what_the_client_wrote(xs: XenstoreClient, sock_dir: Path) -> None:
    await xs.write("/local/domain/0/device-model/5/state", "running")
    result = await tool(sock_dir, "xenstore-read", "/local/domain/0/device-model/5/state")
    assert result.stdout == b"running\n"


async def test_client_reads_what_xenstore_write_stored(xs: XenstoreClient, sock_dir: Path) -> None:
    await tool(sock_dir, "xenstore-write", "/vm/uuid", "1234", "/vm/name", "guest")
    assert (await xs.read("/vm/uuid"), await xs.read("/vm/name")) == (b"1234", b"guest")


async def test_xenstore_ls_shows_the_client_tree(xs: XenstoreClient, sock_dir: Path) -> None:
    await xs.write("/dm-acpi/NFIT/type", "0")
    await xs.write("/dm-acpi/NFIT/length", "232")
    result = await tool(sock_dir, "xenstore-ls", "-f", "/dm-acpi")
    assert result.stdout.decode().splitlines() == [
        '/dm-acpi/NFIT = ""', '/dm-acpi/NFIT/type = "0"', '/dm-acpi/NFIT/length = "232"']


async def test_xenstore_list_shows_the_client_children(xs: XenstoreClient, sock_dir: Path) -> None:
    for name in ("address", "length", "NFIT"):
        await xs.mkdir(f"/dm/{name}")
    result = await tool(sock_dir, "xenstore-list", "/dm")
    assert result.stdout.decode().split() == ["address", "length", "NFIT"]


async def test_xenstore_chmod_sets_the_permissions_the_client_reads(
    xs: XenstoreClient, sock_dir: Path
) -> None:
    await xs.mkdir("/perm")
    await tool(sock_dir, "xenstore-chmod", "/perm", "n0", "r5")
    assert await xs.get_perms("/perm") == [Perm(0, Access.NONE), Perm(GUEST, Access.READ)]


async def test_xenstore_ls_shows_permissions_the_client_set(
    xs: XenstoreClient, sock_dir: Path
) -> None:
    await xs.write("/perm/key", "v")
    await xs.set_perms("/perm/key", [Perm(0, Access.NONE), Perm(GUEST, Access.BOTH)])
    result = await tool(sock_dir, "xenstore-ls", "-p", "/perm")
    line = result.stdout.decode().strip()
    assert line.startswith('key = "v"') and line.endswith("(n0,b5)")


async def test_xenstore_rm_removes_what_the_client_wrote(xs: XenstoreClient, sock_dir: Path) -> None:
    await xs.write("/gone/child", "x")
    await tool(sock_dir, "xenstore-rm", "/gone")
    with pytest.raises(NoEntryError):
        await xs.read("/gone/child")


async def test_xenstore_read_of_a_missing_node_fails(sock_dir: Path, store: Store) -> None:
    result = await tool(sock_dir, "xenstore-read", "/missing", check=False)
    assert result.returncode != 0


async def test_xenstore_watch_reports_a_client_write(xs: XenstoreClient, sock_dir: Path) -> None:
    env = tool_env(str(sock_dir / "dom0"))
    received = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(
                trio.run_process, ["xenstore-watch", "-n", "2", "/watched"], env=env,
                stdout=subprocess.PIPE))
            while b"\n" not in received:  # the registration event: the watch is in place
                received += await process.stdout.receive_some()
            await xs.write("/watched/leaf", "1")
            while chunk := await process.stdout.receive_some():
                received += chunk
            await process.stdout.aclose()
    assert received.decode().splitlines() == ["/watched", "/watched/leaf"]


async def test_guest_tool_gets_eacces_on_dom0_owned_keys(
    xs: XenstoreClient, sock_dir: Path, store: Store
) -> None:
    home = f"/local/domain/{GUEST}"
    await xs.mkdir(f"{home}/hvmloader")
    await xs.set_perms(f"{home}/hvmloader", [Perm(0, Access.NONE), Perm(GUEST, Access.READ)])
    await xs.write(f"{home}/hvmloader/dm-acpi/address", "0xfc000000")
    result = await tool(sock_dir, "xenstore-write", f"{home}/hvmloader/dm-acpi/address", "0x0",
                        socket="guest", check=False)
    assert result.returncode != 0
    assert store.statistics().refusals == {"EACCES": 1}
    assert await xs.read(f"{home}/hvmloader/dm-acpi/address") == b"0xfc000000"


async def test_guest_tool_reads_keys_it_was_granted(xs: XenstoreClient, sock_dir: Path) -> None:
    home = f"/local/domain/{GUEST}"
    await xs.mkdir(f"{home}/hvmloader")
    await xs.set_perms(f"{home}/hvmloader", [Perm(0, Access.NONE), Perm(GUEST, Access.READ)])
    await xs.write(f"{home}/hvmloader/dm-acpi/length", "0x1000")
    result = await tool(sock_dir, "xenstore-read", "hvmloader/dm-acpi/length", socket="guest")
    assert result.stdout == b"0x1000\n"


async def test_guest_tool_writes_under_its_home_with_relative_paths(
    xs: XenstoreClient, sock_dir: Path
) -> None:
    await tool(sock_dir, "xenstore-write", "data/greeting", "hello", socket="guest")
    assert await xs.read(f"/local/domain/{GUEST}/data/greeting") == b"hello"
    assert (await xs.get_perms(f"/local/domain/{GUEST}/data/greeting"))[0].domid == GUEST
