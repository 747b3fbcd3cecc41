"""The QMP server: a thin trio shell pumping bytes between Unix-socket clients and `protocol.Connection`.

Several clients at once, each with two tasks: a reader that feeds the core and runs its
commands one at a time (QMP answers in order), and a writer draining the client's outbox,
where replies and events are queued in the order they happen. Events go to every negotiated
client without waiting: a client whose outbox is full (it stopped reading) is disconnected
and logged, so one stuck client cannot stall the guest or the others.

The socket is created mode 0600 (bound, chmod-ed, then listened on, so no one connects in
between). A stale socket left by a dead daemon is replaced; a live one, or any other file at
the path, is an error. The path is removed on exit. When `pmemd run` bound it at exec
(`early`), the server adopts that listener and the connections already greeted.

`quit`: its reply is queued, then SHUTDOWN is broadcast, every outbox is closed and drained
(bounded by QUIT_FLUSH_TIMEOUT), and only then is `on_quit` called to end the daemon.
Resources: `serve` owns the listener and every connection; cancelling it closes them all.
"""

from __future__ import annotations

import itertools
import socket as stdlib_socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from . import nvdimm_commands, security_commands, vm_commands  # noqa: F401  (register the commands)
from .control import GuestControl
from .early import EarlyQmp, SocketInUse, listen, unlink_if_ours, version_info
from .errors import QmpError
from .protocol import CLOSED, NEED_DATA, Command, Connection, Negotiated, Phase, Refused
from .registry import run_command

log = structlog.get_logger("pmemd.qmp")

MAX_CLIENTS = 16
OUTBOX = 256  # replies and events queued per client before it counts as stuck
RECEIVE_SIZE = 64 << 10
QUIT_FLUSH_TIMEOUT = 2.0  # seconds to flush replies and SHUTDOWN before the daemon ends


QmpSocketError = SocketInUse  # the QMP socket path cannot be used (live daemon, not a socket)


@dataclass
class _Client:
    number: int
    stream: trio.SocketStream
    conn: Connection
    outbox: trio.MemorySendChannel[bytes]
    inbox: trio.MemoryReceiveChannel[bytes]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    writer_done: trio.Event = field(default_factory=trio.Event)


class QmpServer:
    """Serve QMP for one guest on `path`. Usage: `await nursery.start(server.serve)`."""

    def __init__(self, control: GuestControl, path: Path, *, on_quit: Callable[[], None],
                 after_command: Callable[[str], None] = lambda name: None, early: EarlyQmp | None = None) -> None:
        self.control = control
        self.early = early  # the listener `pmemd run` bound at exec, adopted by `serve`
        self.path = Path(path)
        self.on_quit = on_quit
        self.after_command = after_command  # called with each command's name: events, side effects
        self._clients: dict[int, _Client] = {}
        self._numbers = itertools.count(1)
        self._quit_requested = False
        self._quit_started = trio.Event()
        self.dropped_clients = 0

    # -- called by commands and the daemon -----------------------------------------------

    def request_quit(self) -> None:
        """Ask for the daemon's end once the current command's reply is queued."""
        self._quit_requested = True

    def emit(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Broadcast an event to every negotiated client, now (never blocks)."""
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        log.info("qmp event", qmp_event=name, **({"data": dict(data)} if data else {}))
        for client in list(self._clients.values()):
            frame = client.conn.event_bytes(name, data, seconds, micros)
            if not frame:
                continue
            try:
                client.outbox.send_nowait(frame)
            except trio.WouldBlock:
                self.dropped_clients += 1
                log.warning("qmp client dropped: not reading its events", client=client.number)
                client.cancel.cancel()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    # -- serving ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        greeted: list[stdlib_socket.socket] = []
        if self.early is not None and self.early.matches(self.path):
            raw, identity, greeted = self.early.adopt()
        else:
            if self.early is not None:  # bound for another path: that guess is withdrawn
                self.early.close()
            bound, identity = listen(self.path, MAX_CLIENTS)
            raw = stdlib_socket.socket(fileno=bound.detach())
        self.early = None
        await trio.lowlevel.checkpoint()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._finish_on_quit)
                for conn in greeted:
                    nursery.start_soon(self._serve_client, trio.SocketStream(trio.socket.from_stdlib_socket(conn)), True)
                log.info("qmp listening", path=str(self.path), adopted_clients=len(greeted))
                task_status.started()
                while True:
                    stream = await listener.accept()
                    if len(self._clients) >= MAX_CLIENTS:
                        log.warning("qmp client refused: too many clients", limit=MAX_CLIENTS)
                        with trio.CancelScope(shield=True):
                            await stream.aclose()
                        continue
                    nursery.start_soon(self._serve_client, stream)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            unlink_if_ours(self.path, identity)

    async def _serve_client(self, stream: trio.SocketStream, greeted: bool = False) -> None:
        send, receive = trio.open_memory_channel[bytes](OUTBOX)
        client = _Client(next(self._numbers), stream, Connection(version_info()), send, receive)
        self._clients[client.number] = client
        clog = log.bind(client=client.number)
        clog.info("qmp client connected")
        try:
            with client.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, client)
                    await self._read(client, clog, greeted)
                    send.close()  # the writer drains what is queued, then ends
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (a reset included): its problem, never the daemon's
        finally:
            self._clients.pop(client.number, None)
            send.close()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            clog.info("qmp client disconnected")

    async def _write(self, client: _Client) -> None:
        try:
            async for frame in client.inbox:
                await client.stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            client.cancel.cancel()
        finally:
            client.writer_done.set()

    async def _read(self, client: _Client, clog: Any, greeted: bool = False) -> None:
        conn = client.conn
        if not greeted:  # an adopted early connection has had it
            await client.outbox.send(conn.greeting_bytes())
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(await client.stream.receive_some(RECEIVE_SIZE))
                continue
            if event is CLOSED:
                return
            if isinstance(event, Refused):
                clog.info("qmp input refused", error=event.error.desc)
                frame = conn.error_bytes(event.error, event.id)
            elif isinstance(event, Negotiated):
                frame = conn.reply_bytes({}, event.id)
            else:
                assert isinstance(event, Command)
                frame = await self._execute(conn, event, clog)
            await client.outbox.send(frame)
            if self._quit_requested and not self._quit_started.is_set():
                self._begin_quit()

    async def _execute(self, conn: Connection, command: Command, clog: Any) -> bytes:
        try:
            result = await run_command(self.control, command.name, command.arguments)
        except QmpError as e:
            clog.info("qmp command failed", command=command.name, error=e.desc)
            return conn.error_bytes(e, command.id)
        except Exception as e:  # our bug, not the client's: answer and keep serving
            clog.exception("qmp command raised", command=command.name)
            return conn.error_bytes(QmpError(f"internal error in {command.name}: {e}"), command.id)
        finally:
            self.after_command(command.name)
        clog.debug("qmp command", command=command.name)
        return conn.reply_bytes(result, command.id)

    def _begin_quit(self) -> None:
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        for client in self._clients.values():
            client.outbox.close()
        self._quit_started.set()

    async def _finish_on_quit(self) -> None:
        await self._quit_started.wait()
        with trio.move_on_after(QUIT_FLUSH_TIMEOUT):
            for client in list(self._clients.values()):
                await client.writer_done.wait()
        log.info("qmp quit: ending the daemon")
        self.on_quit()

    def client_count(self) -> int:
        return len(self._clients)

    def negotiated_clients(self) -> int:
        return sum(1 for c in self._clients.values() if c.conn.phase is Phase.COMMAND)
