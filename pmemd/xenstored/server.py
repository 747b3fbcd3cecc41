"""An embedded xenstored on a Unix socket, speaking the real xs_wire.h protocol.

Debian's libxenstore (and so ``xenstore-read`` & co.) connects to it when ``XENSTORED_PATH``
names the socket; it sends requests straight away, with no greeting. The semantics live in
:mod:`pmemd.xenstored.store` (sans-I/O); this module only pumps bytes between sockets and
:class:`~pmemd.xenstored.store.Session` objects.

A listener acts as dom0 unless started with ``domid=N``: a second listener on the same
:class:`Store` with ``domid=5`` is how an unmodified C tool is made to act as guest 5 (the
guest's ring, in a real host). A dom0 connection can also switch itself to a guest with the
XS_CONTROL command ``sim-restrict <domid>``.
"""

from __future__ import annotations

import os
import socket as _socket
import stat

import structlog
import trio
from structlog.typing import FilteringBoundLogger as BoundLogger

from pmemd.xenstore.errors import ProtocolError
from pmemd.xenstore.wire import Message, MessageReader, NeedData
from pmemd.xenstored.store import (
    INTRODUCE_DOMAIN,
    PRIVILEGED_DOMID,
    RELEASE_DOMAIN,
    Node,
    Quotas,
    Session,
    Store,
    StoreStatistics,
)

log = structlog.get_logger(__name__)

# Replies and events queued for one slow reader before we give up on it (C xenstored also drops
# connections that let their output pile up).
MAX_OUTSTANDING_MESSAGES = 1024
_RECEIVE_CHUNK = 65536
# Seconds a closing connection may spend flushing queued replies to a peer that is not reading.
FLUSH_TIMEOUT = 5.0


async def serve_xenstored(
    path: str,
    *,
    task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED,
    store: Store | None = None,
    domid: int = PRIVILEGED_DOMID,
) -> None:
    """Serve ``store`` (a fresh one by default) on a Unix socket at ``path`` until cancelled.

    ``await nursery.start(serve_xenstored, path)`` returns the Store once the socket is
    listening. Connections act as ``domid``.

    Resources: a stale socket file at ``path`` is replaced; the socket file is removed on exit.
    Error handling: a misbehaving connection (oversized length, truncated message, unexpected
    failure) is logged and closed; the server and other connections carry on.
    """
    store = store if store is not None else Store()
    if os.path.lexists(path) and stat.S_ISSOCK(os.lstat(path).st_mode):  # noqa: ASYNC240 - once, at start
        os.unlink(path)
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(_socket.SOMAXCONN)
        listener = trio.SocketListener(sock)
    except BaseException:
        sock.close()
        raise
    try:
        async with listener, trio.open_nursery() as nursery:
            async def handler(stream: trio.SocketStream) -> None:
                await _serve_connection(stream, store, domid)

            await nursery.start(trio.serve_listeners, handler, [listener])
            log.info("xenstored listening", path=path, acts_as_domain=domid)
            task_status.started(store)
            await trio.sleep_forever()
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _serve_connection(stream: trio.SocketStream, store: Store, domid: int) -> None:
    """Run one client: this task reads and feeds its Session, a writer task drains its outbox."""
    send_channel, receive_channel = trio.open_memory_channel[Message](MAX_OUTSTANDING_MESSAGES)
    conn_log = log.bind(acts_as_domain=domid, conn=id(stream))
    session: Session | None = None
    try:
        async with stream, trio.open_nursery() as nursery:

            def send(message: Message) -> None:
                try:
                    send_channel.send_nowait(message)
                except trio.WouldBlock:
                    if not nursery.cancel_scope.cancel_called:
                        conn_log.warning("xenstore client is not reading; dropping it")
                        nursery.cancel_scope.cancel()
                except trio.ClosedResourceError:
                    pass

            session = store.connect(send, domid=domid)
            nursery.start_soon(_write_loop, stream, receive_channel)
            try:
                await _read_loop(stream, session, conn_log)
            finally:
                session.close()
                send_channel.close()  # the writer flushes what is queued, then ends
            # A peer that stopped reading must not pin this task forever.
            nursery.cancel_scope.deadline = trio.current_time() + FLUSH_TIMEOUT
    except Exception as exc:
        broken, other = (
            exc.split((trio.BrokenResourceError, trio.ClosedResourceError))
            if isinstance(exc, ExceptionGroup) else (None, exc)
        )
        if other is None or isinstance(other, (trio.BrokenResourceError,
                                               trio.ClosedResourceError)):
            conn_log.debug("xenstore connection broke", error=str(broken or other))
        else:
            conn_log.error("xenstore connection failed", exc_info=other)
    finally:
        if session is not None:
            session.close()


async def _read_loop(stream: trio.SocketStream, session: Session, conn_log: BoundLogger) -> None:
    """Feed received bytes to the framer and each whole request to the session, until EOF or
    a framing error (after which the stream cannot be resynchronised)."""
    reader = MessageReader()
    while True:
        try:
            data = await stream.receive_some(_RECEIVE_CHUNK)
        except trio.BrokenResourceError:
            data = b""
        reader.receive_data(data)
        try:
            while not isinstance(message := reader.next_message(), NeedData):
                session.handle(message)
        except ProtocolError as exc:
            conn_log.info("closing xenstore connection on protocol error", error=str(exc))
            return
        if not data:
            return


async def _write_loop(
    stream: trio.SocketStream, messages: trio.MemoryReceiveChannel[Message]
) -> None:
    async with messages:
        async for message in messages:
            await stream.send_all(message.encode())


__all__ = [
    "INTRODUCE_DOMAIN",
    "MAX_OUTSTANDING_MESSAGES",
    "RELEASE_DOMAIN",
    "Node",
    "Quotas",
    "Store",
    "StoreStatistics",
    "serve_xenstored",
]
