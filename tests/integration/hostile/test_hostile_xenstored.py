"""Hostile xenstore requests on the embedded xenstored's socket (fuzzing findings 1 and 2).

A guest's request may be refused, never answered by dropping a connection, and never
make another client's request fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from pmemd.xenstore.wire import Message, MessageReader, MsgType, NeedData, Perm, decode_error

HOSTILE_DOMID = 7
LONG_TOKEN = "t" * 4089


class RawConnection:
    """One xenstore connection speaking bytes, so a test can send what no client would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = MessageReader()
        self.next_id = 1

    async def send(self, kind: MsgType, payload: bytes) -> Message:
        req_id, self.next_id = self.next_id, self.next_id + 1
        await self.stream.send_all(Message(kind, req_id, 0, payload).encode())
        while True:
            msg = await self.receive()
            if msg.type != MsgType.WATCH_EVENT:
                assert msg.req_id == req_id
                return msg

    async def receive(self) -> Message:
        with trio.fail_after(5):
            while isinstance(msg := self.reader.next_message(), NeedData):
                data = await self.stream.receive_some()
                assert data, "xenstored closed the connection"
                self.reader.receive_data(data)
        return msg


@asynccontextmanager
async def raw(path: str) -> AsyncIterator[RawConnection]:
    async with await trio.open_unix_socket(path) as stream:
        yield RawConnection(stream)


async def test_a_guest_watch_too_long_to_report_does_not_break_a_dom0_writer(host) -> None:
    dom0 = await host.client()
    await dom0.mkdir(f"/local/domain/{HOSTILE_DOMID}/pmemd")
    await dom0.set_perms(f"/local/domain/{HOSTILE_DOMID}/pmemd", [Perm.parse("n0"), Perm.parse(f"r{HOSTILE_DOMID}")])
    watcher = await host.client()
    path = f"/local/domain/{HOSTILE_DOMID}/pmemd/probe"
    async with raw(host.xs_sock) as guest, watcher.watching(f"/local/domain/{HOSTILE_DOMID}/pmemd") as events:
        await guest.send(MsgType.CONTROL, b"sim-restrict\0%d\0" % HOSTILE_DOMID)
        await events.receive()  # the initial fire
        await guest.send(MsgType.WATCH, b"pmemd\0" + LONG_TOKEN.encode() + b"\0")
        with trio.fail_after(5):
            await dom0.write(path, "1")
            assert (await events.receive()).path == path
    assert await dom0.read(path) == b"1"


async def test_a_daemon_starts_after_a_guest_set_a_watch_too_long_to_report(host) -> None:
    await (await host.client()).mkdir(f"/local/domain/{HOSTILE_DOMID}/pmemd")
    async with raw(host.xs_sock) as guest:
        await guest.send(MsgType.CONTROL, b"sim-restrict\0%d\0" % HOSTILE_DOMID)
        await guest.send(MsgType.WATCH, b"pmemd\0" + LONG_TOKEN.encode() + b"\0")
        cfg = host.config(nvdimms=1, domid=HOSTILE_DOMID)
        await host.create_domain(cfg)
        daemon = await host.start_daemon(cfg)
        await daemon.stop()


async def test_set_perms_with_an_empty_payload_is_einval_and_keeps_the_connection(host) -> None:
    async with raw(host.xs_sock) as conn:
        reply = await conn.send(MsgType.SET_PERMS, b"")
        assert (reply.type, decode_error(reply.payload)) == (MsgType.ERROR, "EINVAL")
        assert (await conn.send(MsgType.DIRECTORY, b"/\0")).type == MsgType.DIRECTORY
