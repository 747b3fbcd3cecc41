"""The trio client against the embedded xenstored: every request type, watches, transactions,
permissions, quotas, and the server surviving malformed input."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from pmemd.xenstore import (
    Access,
    AccessDeniedError,
    ConnectionClosedError,
    ExistsError,
    InvalidArgumentError,
    NoEntryError,
    Perm,
    QuotaError,
    TransactionConflictError,
    WatchEvent,
    XenstoreClient,
    open_client,
)
from pmemd.xenstore.wire import (
    HEADER,
    NEED_DATA,
    Message,
    MessageReader,
    MsgType,
    decode_error,
    encode_strings,
)
from pmemd.xenstored.server import Quotas, Store, serve_xenstored

GUEST = 5


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="xs", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
def store() -> Store:
    return Store(Quotas(max_node_size=64, nodes_per_domain=8, watches_per_connection=3))


@pytest.fixture
async def server(nursery: trio.Nursery, sock_dir: Path, store: Store) -> str:
    path = str(sock_dir / "xenstored")
    await nursery.start(partial(serve_xenstored, path, store=store))
    return path


@pytest.fixture
async def xs(server: str) -> AsyncIterator[XenstoreClient]:
    async with open_client(server) as client:
        yield client


@pytest.fixture
async def guest(server: str, store: Store) -> AsyncIterator[XenstoreClient]:
    """A connection acting as domain 5, which owns its home as libxl would arrange."""
    store.mkdir(f"/local/domain/{GUEST}")
    store.set_perms(f"/local/domain/{GUEST}", [Perm(GUEST, Access.NONE)])
    async with open_client(server) as client:
        await client.control("sim-restrict", str(GUEST))
        yield client


async def next_event(events: trio.MemoryReceiveChannel[WatchEvent]) -> WatchEvent:
    with trio.fail_after(5):
        return await events.receive()


# -- tree requests ---------------------------------------------------------------------------


async def test_read_returns_what_write_stored(xs: XenstoreClient) -> None:
    await xs.write("/vm/name", b"guest\0one")
    assert await xs.read("/vm/name") == b"guest\0one"


async def test_write_creates_missing_parents(xs: XenstoreClient) -> None:
    await xs.write("/a/b/c", "x")
    assert await xs.directory("/a") == ["b"]
    assert await xs.read("/a/b") == b""


async def test_directory_lists_children_in_creation_order(xs: XenstoreClient) -> None:
    for name in ("zeta", "alpha", "mid"):
        await xs.write(f"/d/{name}", "")
    assert await xs.directory("/d") == ["zeta", "alpha", "mid"]


async def test_directory_too_big_for_one_payload_is_fetched_in_parts(
    xs: XenstoreClient, store: Store
) -> None:
    names = [f"child-{i:04d}-" + "x" * 40 for i in range(120)]  # about 6 KiB of names
    for name in names:
        store.mkdir(f"/big/{name}")
    assert await xs.directory("/big") == names


async def test_directory_part_chunks_end_with_an_extra_nul(xs: XenstoreClient) -> None:
    await xs.write("/p/a", "")
    await xs.write("/p/b", "")
    reply = await xs._call(MsgType.DIRECTORY_PART, encode_strings("/p", "0"), 0)
    generation, _, names = reply.partition(b"\0")
    assert generation.isdigit()
    assert names == b"a\0b\0\0"


async def test_mkdir_creates_an_empty_node(xs: XenstoreClient) -> None:
    await xs.mkdir("/m")
    assert await xs.read("/m") == b""


async def test_mkdir_of_an_existing_node_keeps_its_value(xs: XenstoreClient) -> None:
    await xs.write("/m", "kept")
    await xs.mkdir("/m")
    assert await xs.read("/m") == b"kept"


async def test_rm_removes_the_whole_subtree(xs: XenstoreClient) -> None:
    await xs.write("/r/x/y", "1")
    await xs.rm("/r")
    assert not await xs.exists("/r/x/y")
    assert not await xs.exists("/r")


async def test_rm_of_a_missing_child_is_accepted(xs: XenstoreClient) -> None:
    await xs.mkdir("/r")
    await xs.rm("/r/nothing")
    assert await xs.directory("/r") == []


async def test_rm_of_the_root_is_invalid(xs: XenstoreClient) -> None:
    with pytest.raises(InvalidArgumentError):
        await xs.rm("/")


async def test_read_of_a_missing_node_is_enoent(xs: XenstoreClient) -> None:
    with pytest.raises(NoEntryError) as info:
        await xs.read("/nowhere")
    assert info.value.errno_name == "ENOENT"


async def test_new_nodes_inherit_parent_permissions(xs: XenstoreClient) -> None:
    await xs.mkdir("/shared")
    await xs.set_perms("/shared", [Perm(0, Access.READ), Perm(GUEST, Access.BOTH)])
    await xs.write("/shared/leaf", "v")
    assert await xs.get_perms("/shared/leaf") == [Perm(0, Access.READ), Perm(GUEST, Access.BOTH)]


async def test_set_perms_round_trips(xs: XenstoreClient) -> None:
    await xs.mkdir("/p")
    perms = [Perm(GUEST, Access.NONE), Perm(0, Access.READ), Perm(7, Access.WRITE)]
    await xs.set_perms("/p", perms)
    assert await xs.get_perms("/p") == perms


async def test_relative_paths_live_under_the_domain_home(xs: XenstoreClient) -> None:
    await xs.write("device-model/5/state", "running")
    assert await xs.read("/local/domain/0/device-model/5/state") == b"running"


async def test_get_domain_path_names_the_domain_home(xs: XenstoreClient) -> None:
    assert await xs.get_domain_path(7) == "/local/domain/7"


async def test_concurrent_requests_are_matched_by_req_id(xs: XenstoreClient) -> None:
    for i in range(50):
        await xs.write(f"/c/{i}", str(i))
    results: dict[int, bytes] = {}

    async def read_one(i: int) -> None:
        results[i] = await xs.read(f"/c/{i}")

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(read_one, i)
    assert results == {i: str(i).encode() for i in range(50)}


# -- watches ----------------------------------------------------------------------------------


async def test_watch_fires_once_on_registration(xs: XenstoreClient) -> None:
    token, events = await xs.watch("/w", "tok")
    assert await next_event(events) == WatchEvent("/w", "tok")


async def test_watch_fires_for_changes_below_the_node(xs: XenstoreClient) -> None:
    async with xs.watching("/w") as events:
        await next_event(events)
        await xs.write("/w/deep/leaf", "1")
        assert (await next_event(events)).path == "/w/deep/leaf"


async def test_watch_ignores_changes_outside_the_node(xs: XenstoreClient) -> None:
    async with xs.watching("/w") as events:
        await next_event(events)
        await xs.write("/w-sibling", "1")
        await xs.write("/w", "2")
        assert (await next_event(events)).path == "/w"


async def test_removing_a_subtree_fires_watches_on_removed_descendants(
    xs: XenstoreClient,
) -> None:
    await xs.write("/t/child", "1")
    async with xs.watching("/t/child") as events:
        await next_event(events)
        await xs.rm("/t")
        assert (await next_event(events)).path == "/t/child"


async def test_relative_watch_reports_relative_paths(xs: XenstoreClient) -> None:
    async with xs.watching("device-model") as events:
        await next_event(events)
        await xs.write("device-model/5/state", "running")
        assert (await next_event(events)).path == "device-model/5/state"


async def test_unwatch_ends_the_event_channel(xs: XenstoreClient) -> None:
    token, events = await xs.watch("/w")
    await next_event(events)
    await xs.unwatch("/w", token)
    with pytest.raises(trio.EndOfChannel):
        await next_event(events)


async def test_duplicate_watch_is_eexist(xs: XenstoreClient) -> None:
    await xs._call(MsgType.WATCH, encode_strings("/w", "same"), 0)
    with pytest.raises(ExistsError):
        await xs._call(MsgType.WATCH, encode_strings("/w", "same"), 0)


async def test_reset_watches_stops_all_events(xs: XenstoreClient) -> None:
    _, events = await xs.watch("/w")
    await xs.reset_watches()
    await xs.write("/w", "1")
    assert [event async for event in events] == [WatchEvent("/w", "pmemd-1")]


async def test_watch_events_arrive_while_a_transaction_is_open(
    xs: XenstoreClient, server: str
) -> None:
    await xs.mkdir("/ev")
    await xs.mkdir("/txn")
    async with xs.watching("/ev") as events, open_client(server) as other:
        await next_event(events)
        async with xs.transaction() as tx:
            await tx.write("/txn/owned", "pending")
            await other.write("/ev/from-other", "1")
            assert (await next_event(events)).path == "/ev/from-other"
            assert await tx.read("/txn/owned") == b"pending"


async def test_release_domain_fires_release_watches(xs: XenstoreClient, store: Store) -> None:
    async with xs.watching("@releaseDomain") as events:
        await next_event(events)
        store.release_domain(GUEST)
        assert await next_event(events) == WatchEvent("@releaseDomain", "pmemd-1")


async def test_introduce_fires_introduce_watches(xs: XenstoreClient) -> None:
    async with xs.watching("@introduceDomain") as events:
        await next_event(events)
        await xs.introduce(GUEST, 1234, 1)
        assert (await next_event(events)).path == "@introduceDomain"


async def test_introduce_release_and_is_domain_introduced_agree(xs: XenstoreClient) -> None:
    await xs.introduce(GUEST, 1234, 1)
    assert await xs.is_domain_introduced(GUEST)
    await xs.resume(GUEST)
    await xs.release(GUEST)
    assert not await xs.is_domain_introduced(GUEST)


async def test_resume_of_an_unknown_domain_is_enoent(xs: XenstoreClient) -> None:
    with pytest.raises(NoEntryError):
        await xs.resume(42)


# -- transactions -------------------------------------------------------------------------------


async def test_transaction_writes_are_invisible_until_commit(
    xs: XenstoreClient, server: str
) -> None:
    async with open_client(server) as other:
        async with xs.transaction() as tx:
            await tx.write("/tx/key", "v")
            assert not await other.exists("/tx/key")
        assert await other.read("/tx/key") == b"v"


async def test_conflicting_transaction_gets_eagain(xs: XenstoreClient, server: str) -> None:
    await xs.write("/counter", "0")
    async with open_client(server) as other:
        with pytest.raises(TransactionConflictError) as info:
            async with xs.transaction() as tx:
                await tx.write("/counter", str(int(await tx.read("/counter")) + 1))
                await other.write("/counter", "100")
    assert info.value.errno_name == "EAGAIN"
    assert await xs.read("/counter") == b"100"


async def test_transaction_aborts_when_its_body_raises(xs: XenstoreClient) -> None:
    with pytest.raises(RuntimeError):
        async with xs.transaction() as tx:
            await tx.write("/aborted", "v")
            raise RuntimeError("give up")
    assert not await xs.exists("/aborted")


async def test_run_transaction_retries_after_a_conflict(xs: XenstoreClient, server: str) -> None:
    await xs.write("/counter", "0")
    attempts = 0

    async with open_client(server) as other:
        async def increment(tx: object) -> None:
            nonlocal attempts
            attempts += 1
            value = int(await tx.read("/counter"))  # type: ignore[attr-defined]
            if attempts == 1:
                await other.write("/counter", "10")
            await tx.write("/counter", str(value + 1))  # type: ignore[attr-defined]

        await xs.run_transaction(increment)
    assert (attempts, await xs.read("/counter")) == (2, b"11")


async def test_unknown_transaction_id_is_enoent(xs: XenstoreClient) -> None:
    with pytest.raises(NoEntryError):
        await xs._call(MsgType.READ, encode_strings("/"), 999)


# -- permissions, privilege, quotas ------------------------------------------------------------


async def test_guest_cannot_write_dom0_owned_keys(xs: XenstoreClient, guest: XenstoreClient) -> None:
    # As libxl does: the hvmloader dir is dom0's, read-only for the guest, before keys go in.
    await xs.mkdir(f"/local/domain/{GUEST}/hvmloader")
    await xs.set_perms(f"/local/domain/{GUEST}/hvmloader",
                       [Perm(0, Access.NONE), Perm(GUEST, Access.READ)])
    await xs.write(f"/local/domain/{GUEST}/hvmloader/dm-acpi/address", "0xfc000000")
    with pytest.raises(AccessDeniedError) as info:
        await guest.write("hvmloader/dm-acpi/address", "0x0")
    assert info.value.errno_name == "EACCES"
    assert await guest.read("hvmloader/dm-acpi/address") == b"0xfc000000"


async def test_guest_cannot_read_nodes_without_read_access(
    xs: XenstoreClient, guest: XenstoreClient
) -> None:
    await xs.write("/local/domain/0/secret", "x")
    with pytest.raises(AccessDeniedError):
        await guest.read("/local/domain/0/secret")


async def test_missing_node_under_an_unreadable_parent_is_eacces(
    xs: XenstoreClient, guest: XenstoreClient
) -> None:
    await xs.mkdir("/local/domain/0")
    with pytest.raises(AccessDeniedError):
        await guest.read("/local/domain/0/absent")


async def test_guest_owns_the_nodes_it_creates(xs: XenstoreClient, guest: XenstoreClient) -> None:
    await xs.set_perms(f"/local/domain/{GUEST}", [Perm(0, Access.NONE), Perm(GUEST, Access.BOTH)])
    await guest.write("data/key", "v")
    assert (await xs.get_perms(f"/local/domain/{GUEST}/data/key"))[0] == Perm(GUEST, Access.NONE)


async def test_guest_cannot_give_its_nodes_away(guest: XenstoreClient) -> None:
    await guest.write("mine", "v")
    with pytest.raises(AccessDeniedError) as info:
        await guest.set_perms("mine", [Perm(0, Access.NONE)])
    assert info.value.errno_name == "EPERM"


async def test_guest_cannot_send_privileged_requests(guest: XenstoreClient) -> None:
    with pytest.raises(AccessDeniedError):
        await guest.introduce(6, 1, 1)


async def test_set_target_gives_owner_rights_on_the_target(
    xs: XenstoreClient, guest: XenstoreClient
) -> None:
    await xs.mkdir("/local/domain/9")
    await xs.set_perms("/local/domain/9", [Perm(9, Access.NONE)])
    await xs.set_target(GUEST, 9)
    await guest.write("/local/domain/9/device-model-state", "running")
    assert await xs.read("/local/domain/9/device-model-state") == b"running"


async def test_guest_node_count_quota_is_equota(guest: XenstoreClient) -> None:
    for i in range(7):  # the guest's home is its eighth node
        await guest.write(f"n{i}", "")
    with pytest.raises(QuotaError) as info:
        await guest.write("one-too-many", "")
    assert info.value.errno_name == "EQUOTA"


async def test_node_larger_than_the_size_quota_is_e2big(xs: XenstoreClient) -> None:
    with pytest.raises(QuotaError) as info:
        await xs.write("/big", b"x" * 65)
    assert info.value.errno_name == "E2BIG"


async def test_guest_watch_quota_is_e2big(guest: XenstoreClient) -> None:
    for i in range(3):
        await guest.watch(f"w{i}")
    with pytest.raises(QuotaError) as info:
        await guest.watch("w3")
    assert info.value.errno_name == "E2BIG"


async def test_guest_sees_no_events_for_nodes_it_cannot_read(
    xs: XenstoreClient, guest: XenstoreClient
) -> None:
    async with guest.watching("/") as events:
        await next_event(events)
        await xs.write("/local/domain/0/hidden", "x")
        await xs.write(f"/local/domain/{GUEST}/visible", "y")
        assert (await next_event(events)).path == f"/local/domain/{GUEST}/visible"


async def test_control_check_answers_ok(xs: XenstoreClient) -> None:
    assert await xs.control("check") == b"OK\0"


async def test_unknown_control_command_is_einval(xs: XenstoreClient) -> None:
    with pytest.raises(InvalidArgumentError):
        await xs.control("no-such-command")


async def test_store_api_obeys_the_same_permissions(store: Store) -> None:
    store.write("/local/domain/0/name", "Domain-0")
    with pytest.raises(AccessDeniedError):
        store.write("/local/domain/0/name", "evil", as_domid=GUEST)


# -- connection failures and malformed input ----------------------------------------------------


async def test_closed_socket_fails_pending_and_later_calls(
    nursery: trio.Nursery, sock_dir: Path
) -> None:
    """A peer that reads one request and hangs up."""
    path = str(sock_dir / "dying")
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen()

    async def accept_read_and_close() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(100)

    nursery.start_soon(accept_read_and_close)
    async with open_client(path) as client:
        with pytest.raises(ConnectionClosedError):
            await client.read("/a")
        with pytest.raises(ConnectionClosedError):
            await client.read("/b")
    listener.close()


async def test_closed_socket_ends_watch_channels(
    nursery: trio.Nursery, sock_dir: Path
) -> None:
    path = str(sock_dir / "dying")
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen()
    closing = trio.Event()

    async def ack_watch_then_close() -> None:
        conn, _ = await listener.accept()
        with conn:
            reader = MessageReader()
            reader.receive_data(await conn.recv(100))
            request = reader.next_message()
            assert isinstance(request, Message)
            await conn.send(Message(MsgType.WATCH, request.req_id, 0, b"OK\0").encode())
            await closing.wait()

    nursery.start_soon(ack_watch_then_close)
    async with open_client(path) as client:
        _, events = await client.watch("/w")
        closing.set()
        with pytest.raises(trio.EndOfChannel):
            await next_event(events)
    listener.close()


async def raw_exchange(path: str, data: bytes) -> list[Message] | None:
    """Send raw bytes; return the replies, or None if the server closed without replying."""
    async with await trio.open_unix_socket(path) as stream:
        await stream.send_all(data)
        reader = MessageReader()
        with trio.fail_after(5):
            chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        reader.receive_data(chunk)
        replies = []
        while (message := reader.next_message()) is not NEED_DATA:
            assert isinstance(message, Message)
            replies.append(message)
        return replies


def error_names(replies: list[Message] | None) -> list[str]:
    assert replies is not None
    return [decode_error(m.payload) for m in replies if m.type == MsgType.ERROR]


async def test_oversized_length_closes_only_that_connection(xs: XenstoreClient, server: str) -> None:
    header = HEADER.build({"type": 2, "req_id": 1, "tx_id": 0, "len": 1 << 20})
    assert await raw_exchange(server, header) is None
    await xs.write("/still", "serving")
    assert await xs.read("/still") == b"serving"


async def test_unknown_message_type_gets_einval(server: str) -> None:
    assert error_names(await raw_exchange(server, Message(20, 1, 0, b"/\0").encode())) == [
        "EINVAL"]


async def test_path_with_invalid_utf8_gets_einval(server: str) -> None:
    frame = Message(MsgType.READ, 1, 0, b"/\xff\xfe\0").encode()
    assert error_names(await raw_exchange(server, frame)) == ["EINVAL"]


async def test_payload_without_nul_gets_einval(server: str) -> None:
    frame = Message(MsgType.READ, 1, 0, b"/local").encode()
    assert error_names(await raw_exchange(server, frame)) == ["EINVAL"]


async def test_reply_only_type_sent_as_request_gets_einval(server: str) -> None:
    frame = Message(MsgType.WATCH_EVENT, 1, 0, b"/\0t\0").encode()
    assert error_names(await raw_exchange(server, frame)) == ["EINVAL"]


async def test_truncated_message_then_hangup_leaves_the_server_serving(
    xs: XenstoreClient, server: str
) -> None:
    async with await trio.open_unix_socket(server) as stream:
        await stream.send_all(Message(MsgType.READ, 1, 0, b"/local\0").encode()[:10])
    await trio.testing.wait_all_tasks_blocked()
    assert await xs.get_domain_path(1) == "/local/domain/1"


async def test_garbage_connection_does_not_disturb_other_clients(
    xs: XenstoreClient, server: str
) -> None:
    await xs.write("/k", "v")
    async with xs.watching("/k") as events:
        await next_event(events)
        await raw_exchange(server, b"\xde\xad\xbe\xef" * 64)
        await xs.write("/k", "w")
        assert (await next_event(events)).path == "/k"
    assert await xs.read("/k") == b"w"


async def test_closing_a_connection_drops_its_watches_and_transactions(
    server: str, store: Store
) -> None:
    async with open_client(server) as client:
        await client.watch("/w")
        await client._call(MsgType.TRANSACTION_START, b"\0", 0)
        assert (store.statistics().watches, store.statistics().open_transactions) == (1, 1)
    await trio.testing.wait_all_tasks_blocked()
    stats = store.statistics()
    assert (stats.connections, stats.watches, stats.open_transactions) == (0, 0, 0)
