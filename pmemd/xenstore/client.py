"""A trio xenstore client over a Unix socket (xenstored's, or the embedded simulator's).

``async with open_client(path) as xs:`` connects and runs one reader task in a nursery the
client owns. Requests from any number of tasks are in flight at once and matched to replies by
req_id; watch events are routed by token to trio memory channels, so a task can wait for events
while others (or itself, in a transaction) keep issuing requests. When the socket closes, every
pending and later call raises :class:`~pmemd.xenstore.errors.ConnectionClosedError` and every
watch channel ends.

Errors: XS_ERROR replies raise the :mod:`pmemd.xenstore.errors` subclass for the errno name;
EAGAIN at transaction end is :class:`TransactionConflictError`, which
:meth:`XenstoreClient.run_transaction` retries.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import structlog
import trio

from pmemd.xenstore.errors import (
    ConnectionClosedError,
    InvalidArgumentError,
    NoEntryError,
    ProtocolError,
    QuotaError,
    RemoteProtocolError,
    TransactionConflictError,
    XenstoreError,
    error_for,
)
from pmemd.xenstore.wire import (
    Message,
    MessageReader,
    MsgType,
    NeedData,
    Perm,
    decode_error,
    decode_perms,
    decode_strings,
    encode_strings,
    encode_write,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Events buffered per watch before newer ones are dropped. Dropping is safe for xenstore's
# semantics (an event only says "look again"), and the reader must never block on a consumer
# that might itself be waiting for a reply.
WATCH_BUFFER = 256
_RECEIVE_CHUNK = 65536
_REQ_ID_SPACE = 1 << 32


@dataclass(frozen=True)
class WatchEvent:
    """XS_WATCH_EVENT: ``path`` changed (or the watch was just registered); ``token`` as given."""

    path: str
    token: str


class _Call:
    """One request awaiting its reply."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Message | None = None  # None once done means the connection closed


class _Operations:
    """The tree requests, shared by the client (no transaction) and :class:`Transaction`."""

    _tx_id = 0

    async def _call(self, kind: MsgType, payload: bytes, tx_id: int) -> bytes:
        raise NotImplementedError

    async def _request(self, kind: MsgType, payload: bytes) -> bytes:
        return await self._call(kind, payload, self._tx_id)

    async def read(self, path: str) -> bytes:
        """XS_READ: the node's value (raw bytes)."""
        return await self._request(MsgType.READ, encode_strings(path))

    async def write(self, path: str, value: bytes | str) -> None:
        """XS_WRITE: set the value, creating the node and missing parents."""
        data = value.encode() if isinstance(value, str) else value
        await self._request(MsgType.WRITE, encode_write(path, data))

    async def mkdir(self, path: str) -> None:
        """XS_MKDIR: create an empty node (no error if it exists)."""
        await self._request(MsgType.MKDIR, encode_strings(path))

    async def rm(self, path: str) -> None:
        """XS_RM: remove the node and everything below it."""
        await self._request(MsgType.RM, encode_strings(path))

    async def directory(self, path: str) -> list[str]:
        """XS_DIRECTORY: child names; falls back to XS_DIRECTORY_PART when the list is too big
        for one payload (E2BIG), as libxenstore does."""
        try:
            return decode_strings(await self._request(MsgType.DIRECTORY, encode_strings(path)))
        except QuotaError as exc:
            if exc.errno_name != "E2BIG":
                raise
        return await self._directory_parts(path)

    async def _directory_parts(self, path: str) -> list[str]:
        while True:  # restart if the node changed between chunks
            names: list[str] = []
            offset, generation = 0, None
            while True:
                reply = await self._request(
                    MsgType.DIRECTORY_PART, encode_strings(path, str(offset)))
                gen, sep, rest = reply.partition(b"\0")
                if not sep:
                    raise RemoteProtocolError("XS_DIRECTORY_PART reply without a generation")
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break
                finished = rest == b"\0" or rest.endswith(b"\0\0")
                chunk = rest[:-1] if finished else rest
                names += decode_strings(chunk)
                offset += len(chunk)
                if finished:
                    return names
                if not chunk:
                    raise RemoteProtocolError("XS_DIRECTORY_PART made no progress")

    async def get_perms(self, path: str) -> list[Perm]:
        """XS_GET_PERMS: owner entry first, then per-domain entries."""
        return decode_perms(await self._request(MsgType.GET_PERMS, encode_strings(path)))

    async def set_perms(self, path: str, perms: Iterable[Perm]) -> None:
        """XS_SET_PERMS: replace the node's permission list (owner first)."""
        await self._request(
            MsgType.SET_PERMS, encode_strings(path, *(str(p) for p in perms)))

    async def exists(self, path: str) -> bool:
        """Whether the node exists (a read that treats ENOENT as False)."""
        try:
            await self.read(path)
        except NoEntryError:
            return False
        return True


class Transaction(_Operations):
    """Requests bound to one xenstore transaction; see :meth:`XenstoreClient.transaction`."""

    def __init__(self, client: XenstoreClient, tx_id: int) -> None:
        self._client = client
        self._tx_id = tx_id

    @property
    def tx_id(self) -> int:
        return self._tx_id

    async def _call(self, kind: MsgType, payload: bytes, tx_id: int) -> bytes:
        return await self._client._call(kind, payload, tx_id)


class XenstoreClient(_Operations):
    """A connection to xenstored. Create with :func:`open_client`."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._send_lock = trio.StrictFIFOLock()
        self._pending: dict[int, _Call] = {}
        self._watches: dict[str, trio.MemorySendChannel[WatchEvent]] = {}
        self._req_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._closed: str | None = None  # why the connection ended
        self.dropped_events = 0

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(self, kind: MsgType, payload: bytes, tx_id: int) -> bytes:
        if self._closed is not None:
            raise ConnectionClosedError(self._closed)
        req_id = self._next_req_id()
        call = self._pending[req_id] = _Call()
        try:
            message = Message(kind, req_id, tx_id, payload)
            async with self._send_lock:
                if self._closed is not None:
                    raise ConnectionClosedError(self._closed)
                try:
                    await self._stream.send_all(message.encode())
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._close(f"send failed: {exc}")
                    raise ConnectionClosedError(f"send failed: {exc}") from exc
            await call.done.wait()
        finally:
            self._pending.pop(req_id, None)
        if call.reply is None:
            raise ConnectionClosedError(self._closed or "connection closed")
        if call.reply.type == MsgType.ERROR:
            raise error_for(decode_error(call.reply.payload), f"{kind.name} {payload[:64]!r}")
        if call.reply.type != kind:
            raise RemoteProtocolError(f"{kind.name} answered with {call.reply.type!r}")
        return call.reply.payload

    def _next_req_id(self) -> int:
        while True:
            req_id = next(self._req_ids) % _REQ_ID_SPACE
            if req_id not in self._pending:
                return req_id

    async def _reader(self) -> None:
        """The one task reading the socket: replies to callers, events to watch channels."""
        framer = MessageReader()
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_CHUNK)
                framer.receive_data(bytes(data))
                while not isinstance(message := framer.next_message(), NeedData):
                    self._route(message)
                if not data:
                    self._close("xenstored closed the connection")
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close(f"connection lost: {exc}")
        except ProtocolError as exc:
            self._close(f"protocol error from xenstored: {exc}")

    def _route(self, message: Message) -> None:
        if message.type == MsgType.WATCH_EVENT:
            path, token = decode_strings(message.payload, 2)
            channel = self._watches.get(token)
            if channel is None:
                log.debug("watch event for an unknown token", path=path, token=token)
                return
            try:
                channel.send_nowait(WatchEvent(path, token))
            except trio.WouldBlock:
                self.dropped_events += 1
            except trio.BrokenResourceError:
                pass  # the consumer closed its end; unwatch will follow
            return
        call = self._pending.get(message.req_id)
        if call is None or call.done.is_set():
            log.warning("reply with an unknown req_id", req_id=message.req_id, type=message.type)
            return
        call.reply = message
        call.done.set()

    def _close(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        for call in self._pending.values():
            call.done.set()
        for channel in self._watches.values():
            channel.close()
        self._watches.clear()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- watches --------------------------------------------------------------------------------

    async def watch(
        self, path: str, token: str | None = None, *, max_buffer: int = WATCH_BUFFER
    ) -> tuple[str, trio.MemoryReceiveChannel[WatchEvent]]:
        """XS_WATCH: register and return ``(token, events)``.

        xenstored fires once on registration, so the first event arrives right away. The channel
        ends on :meth:`unwatch` or when the connection closes.
        """
        token = token if token is not None else f"pmemd-{next(self._tokens)}"
        if token in self._watches:
            raise InvalidArgumentError("EINVAL", f"token {token!r} already in use")
        send, receive = trio.open_memory_channel[WatchEvent](max_buffer)
        self._watches[token] = send  # before the request: the initial event may beat the reply
        try:
            await self._call(MsgType.WATCH, encode_strings(path, token), 0)
        except BaseException:
            self._watches.pop(token, None)
            send.close()
            raise
        return token, receive

    async def unwatch(self, path: str, token: str) -> None:
        """XS_UNWATCH, then end the watch's channel."""
        try:
            await self._call(MsgType.UNWATCH, encode_strings(path, token), 0)
        finally:
            channel = self._watches.pop(token, None)
            if channel is not None:
                channel.close()

    @asynccontextmanager
    async def watching(self, path: str) -> AsyncIterator[trio.MemoryReceiveChannel[WatchEvent]]:
        """``async with xs.watching(path) as events:`` -- unwatches on exit."""
        token, events = await self.watch(path)
        try:
            yield events
        finally:
            if not self.closed:
                with trio.CancelScope(shield=True):
                    await self.unwatch(path, token)

    async def reset_watches(self) -> None:
        """XS_RESET_WATCHES: drop every watch of this connection."""
        await self._call(MsgType.RESET_WATCHES, b"", 0)
        for channel in self._watches.values():
            channel.close()
        self._watches.clear()

    # -- transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``async with xs.transaction() as tx:`` -- commits on normal exit, aborts on error.

        Errors: :class:`TransactionConflictError` (EAGAIN) from the commit if anything the
        transaction touched changed; the caller retries the whole block.
        """
        reply = await self._call(MsgType.TRANSACTION_START, encode_strings(""), 0)
        (tx_text,) = decode_strings(reply, 1)
        if not tx_text.isdigit() or int(tx_text) == 0:
            raise RemoteProtocolError(f"bad transaction id {tx_text!r}")
        tx = Transaction(self, int(tx_text))
        try:
            yield tx
        except BaseException:
            if not self.closed:
                with trio.CancelScope(shield=True):
                    try:
                        await self._call(
                            MsgType.TRANSACTION_END, encode_strings("F"), tx.tx_id)
                    except XenstoreError as exc:  # keep the body's exception the visible one
                        log.debug("transaction abort failed", tx_id=tx.tx_id, error=str(exc))
            raise
        await self._call(MsgType.TRANSACTION_END, encode_strings("T"), tx.tx_id)

    async def run_transaction(
        self, body: Callable[[Transaction], Awaitable[T]], *, attempts: int = 16
    ) -> T:
        """Run ``body`` in a transaction, retrying on EAGAIN up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction() as tx:
                    result = await body(tx)
                return result
            except TransactionConflictError:
                if attempt == attempts:
                    raise
                await trio.lowlevel.checkpoint()
        raise AssertionError("unreachable")

    # -- domains and daemon control ---------------------------------------------------------------

    async def get_domain_path(self, domid: int) -> str:
        """XS_GET_DOMAIN_PATH: ``/local/domain/<domid>``."""
        reply = await self._call(MsgType.GET_DOMAIN_PATH, encode_strings(str(domid)), 0)
        return decode_strings(reply, 1)[0]

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        """XS_INTRODUCE (privileged): a new domain's store ring."""
        await self._call(MsgType.INTRODUCE, encode_strings(str(domid), str(mfn), str(port)), 0)

    async def release(self, domid: int) -> None:
        """XS_RELEASE (privileged): the domain is gone; fires ``@releaseDomain``."""
        await self._call(MsgType.RELEASE, encode_strings(str(domid)), 0)

    async def is_domain_introduced(self, domid: int) -> bool:
        """XS_IS_DOMAIN_INTRODUCED (privileged)."""
        reply = await self._call(MsgType.IS_DOMAIN_INTRODUCED, encode_strings(str(domid)), 0)
        return decode_strings(reply, 1)[0] == "T"

    async def resume(self, domid: int) -> None:
        """XS_RESUME (privileged): the domain resumed after suspend."""
        await self._call(MsgType.RESUME, encode_strings(str(domid)), 0)

    async def set_target(self, domid: int, target: int) -> None:
        """XS_SET_TARGET (privileged): ``domid`` may manage ``target``'s nodes."""
        await self._call(MsgType.SET_TARGET, encode_strings(str(domid), str(target)), 0)

    async def control(self, *args: str) -> bytes:
        """XS_CONTROL (privileged): a daemon command such as ``check`` or ``sim-restrict 5``."""
        return await self._call(MsgType.CONTROL, encode_strings(*args), 0)


@asynccontextmanager
async def open_client(path: str) -> AsyncIterator[XenstoreClient]:
    """Connect to xenstored at the Unix socket ``path``; the reader task lives in the block."""
    stream = await trio.open_unix_socket(path)
    async with stream:
        client = XenstoreClient(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                client._close("client closed")
                nursery.cancel_scope.cancel()


__all__ = [
    "Transaction",
    "WatchEvent",
    "XenstoreClient",
    "open_client",
]
