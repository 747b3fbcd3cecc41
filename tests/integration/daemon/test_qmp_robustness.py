"""Hostile and broken QMP clients on raw sockets: each gets errors, the daemon keeps serving everyone."""

from __future__ import annotations

import json
import socket

import pytest
import trio
import trio.testing

from pmemd import config as configmod
from pmemd.daemon.serve import serve_guest
from pmemd.qmp.protocol import MAX_MESSAGE
from pmemd.qmp.server import MAX_CLIENTS, OUTBOX
from tests.harness.config import MiB, write_config
from tests.harness.qmp import connect

DOMID = 13


class RawClient:
    """A QMP client that sends exactly the bytes it is given and reads whole reply lines."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def negotiate(self) -> None:
        assert "QMP" in await self.line()
        await self.send(b'{"execute": "qmp_capabilities"}')
        assert await self.line() == {"return": {}}


@pytest.fixture
async def guest(sim, tmp_path, nursery):
    await sim.create_domain(DOMID, vcpus=1, lowmem=64 * MiB, unpause=False)
    cfg = configmod.load(write_config(tmp_path, sim.path, domid=DOMID, nvdimms=1))
    return await nursery.start(serve_guest, cfg, str(sim.path))


@pytest.fixture
async def raw(guest):
    stream = await trio.open_unix_socket(str(guest.config.qmp_socket))
    client = RawClient(stream)
    await client.negotiate()
    yield client
    await stream.aclose()


async def test_a_client_that_resets_its_connection_does_not_stop_the_daemon(guest):
    for _ in range(3):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(guest.config.qmp_socket))
        await trio.lowlevel.wait_readable(sock)  # the greeting arrived, and stays unread:
        sock.close()  # closing over unread data resets the connection (ECONNRESET at the server)
        await trio.testing.wait_all_tasks_blocked()
    stream = await trio.open_unix_socket(str(guest.config.qmp_socket))
    client = RawClient(stream)
    await client.negotiate()
    await client.send(b'{"execute": "query-status"}')
    assert (await client.line())["return"]["status"] == "running"
    await stream.aclose()


def is_parse_error(reply: dict) -> bool:
    return reply["error"]["class"] == "GenericError" and reply["error"]["desc"].startswith("JSON parse error")


async def test_garbage_gets_an_error_and_the_connection_serves_the_next_command(raw):
    await raw.send(b"\x00\x01garbage\xff\n")
    assert is_parse_error(await raw.line())
    await raw.send(b'{"execute": "query-status", "id": 3}')
    assert await raw.line() == {"return": {"running": True, "status": "running"}, "id": 3}


async def test_half_an_object_ended_by_a_newline_in_a_string_gets_an_error(raw):
    await raw.send(b'{"execute": "query-sta\n')
    assert is_parse_error(await raw.line())
    await raw.send(b'{"execute": "query-status"}')
    assert "return" in await raw.line()


async def test_a_1_mib_line_gets_one_error_and_the_connection_goes_on(raw):
    await raw.send(b'{"execute": "query-status", "arguments": {"x": "' + b"A" * (1 << 20) + b'"}}\n')
    reply = await raw.line()
    assert is_parse_error(reply) and str(MAX_MESSAGE) in reply["error"]["desc"]
    await raw.send(b"B" * (1 << 20) + b"\n")
    assert is_parse_error(await raw.line())
    await raw.send(b'{"execute": "query-status", "id": "after"}')
    assert (await raw.line())["id"] == "after"


async def test_other_clients_are_served_while_one_sends_a_half_object_and_stalls(guest, raw):
    await raw.send(b'{"execute": "query-status", "arguments": {"pad": "' + b"x" * 1000)
    async with connect(guest.config.qmp_socket) as qmp:
        assert (await qmp.execute("query-status"))["status"] == "running"


async def test_a_client_vanishing_mid_object_leaves_the_daemon_serving(guest):
    stream = await trio.open_unix_socket(str(guest.config.qmp_socket))
    await stream.send_all(b'{"execute": "qmp_capabilities"}{"execute": "stop", "argu')
    await stream.aclose()
    async with connect(guest.config.qmp_socket) as qmp:
        assert (await qmp.execute("query-status"))["status"] == "running"


async def test_malformed_arguments_get_an_error_with_the_id_and_keep_the_connection(raw):
    await raw.send(b'{"execute": "pmemd-query-poison", "arguments": {"limit": "all"}, "id": 9}')
    reply = await raw.line()
    assert reply["id"] == 9 and "Invalid parameter type for 'limit'" in reply["error"]["desc"]
    await raw.send(b'{"execute": "query-status", "id": 10}')
    assert (await raw.line())["id"] == 10


async def test_connections_past_the_client_limit_are_closed_and_the_rest_still_work(guest):
    streams = [await trio.open_unix_socket(str(guest.config.qmp_socket)) for _ in range(MAX_CLIENTS)]
    try:
        for stream in streams:
            assert "QMP" in await RawClient(stream).line()
        extra = RawClient(await trio.open_unix_socket(str(guest.config.qmp_socket)))
        with pytest.raises(EOFError):
            await extra.line()
        await extra.stream.aclose()
        first = RawClient(streams[0])
        await first.send(b'{"execute": "qmp_capabilities"}')
        assert await first.line() == {"return": {}}
    finally:
        for stream in streams:
            await stream.aclose()


async def test_a_client_that_stops_reading_events_is_dropped_and_others_keep_theirs(guest, raw, nursery):
    stuck = RawClient(await trio.open_unix_socket(str(guest.config.qmp_socket)))
    await stuck.negotiate()  # then never reads again
    received = 0

    async def read_events() -> None:
        nonlocal received
        while True:
            await raw.line()
            received += 1

    nursery.start_soon(read_events)
    sent = 0
    while guest.qmp.dropped_clients == 0:
        for _ in range(OUTBOX // 2):
            guest.qmp.emit("TEST_EVENT", {"n": sent})
            sent += 1
        await trio.testing.wait_all_tasks_blocked()
        assert sent < 100_000, "the stuck client was never dropped"
    await trio.testing.wait_all_tasks_blocked()
    assert received == sent
    assert guest.qmp.client_count() == 1
    await stuck.stream.aclose()


@pytest.mark.parametrize("line", [
    b'{"execute": "pmemd-set-health", "arguments": {"slot": 0, "media-temperature": 1e999}, "id": 1}',
    b'{"execute": "pmemd-set-health", "arguments": {"slot": 0, "ctrl-temperature": -1e999}, "id": 1}',
], ids=["inf", "-inf"])
async def test_a_temperature_json_reads_as_infinite_gets_a_generic_error_naming_it(raw, line):
    await raw.send(line)
    reply = await raw.line()
    assert reply["error"]["class"] == "GenericError" and "temperature' expects a finite number" in reply["error"]["desc"]
    await raw.send(b'{"execute": "query-status"}')
    assert (await raw.line())["return"]["status"] == "running"


@pytest.mark.parametrize("command", ["xen-save-devices-state", "xen-load-devices-state"])
@pytest.mark.parametrize("filename", [rb'"/tmp/a\u0000b"', rb'"/tmp/\ud800"'], ids=["nul", "lone-surrogate"])
async def test_a_filename_no_file_can_have_gets_a_generic_error_naming_it(raw, command, filename):
    await raw.send(b'{"execute": "stop", "id": 1}')
    await raw.send(b'{"execute": "%s", "arguments": {"filename": %s}, "id": 2}' % (command.encode(), filename))
    while (reply := await raw.line()).get("id") != 2:
        pass
    assert reply["error"]["class"] == "GenericError" and reply["error"]["desc"].startswith("Parameter 'filename'")
