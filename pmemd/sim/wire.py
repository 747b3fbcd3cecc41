"""The simulator's wire protocol: length-prefixed frames on a Unix stream socket.

    frame = u32 length (of kind + body) | u8 kind | body

`KIND_JSON` bodies are one JSON object: requests `{"op": ..., ...}`, replies
`{"ok": true, ...}` or `{"ok": false, "errno": N, "error": "..."}`. A reply that
carries file descriptors (guest RAM, an ioreq page, an event-channel socket) says
`"nfds": n` and the descriptors travel with SCM_RIGHTS on the frame's first byte.
Guest accesses, the only frequent traffic on this socket, use fixed binary bodies
(`GuestAccess`, `AccessReply`) instead of JSON. Event-channel notifications never
use frames: they are raw 4-byte port numbers on a socketpair (see `pmemd.sim.client.evtchn`).

`FrameDecoder` is the sans-I/O core; `SyncChannel` (stdlib sockets) and
`AsyncChannel` (trio) are the thin shells both sides use.
"""

from __future__ import annotations

import array
import json
import socket
import struct
from collections import deque
from typing import Any

import trio
from construct import Int8ul, Int32sl, Int32ul, Int64ul, Padding, Struct

from pmemd.sim.errors import WireError

KIND_JSON = 0
KIND_ACCESS = 1
KIND_ACCESS_REPLY = 2

MAX_FRAME = 1 << 20  # caps what a peer can make us buffer
MAX_FDS = 4

# Guest access spaces.
SPACE_PORT = 0
SPACE_MMIO = 1
ACCESS_FLAG_DF = 0x1
ACCESS_FLAG_DATA_IS_PTR = 0x2

GuestAccess = Struct(
    "space" / Int8ul * "SPACE_PORT or SPACE_MMIO",
    "dir" / Int8ul * "IOREQ_READ or IOREQ_WRITE",
    "size" / Int8ul,
    "flags" / Int8ul * "ACCESS_FLAG_*",
    "count" / Int32ul,
    "addr" / Int64ul,
    "data" / Int64ul,
)
"""One vCPU access, guest -> simulator (24 bytes)."""

AccessReply = Struct(
    "status" / Int32sl * "0, or a negative errno (ESRCH: domain crashed or gone)",
    "trapped" / Int8ul * "1 if an ioreq server handled the access",
    Padding(3),
    "data" / Int64ul,
)
"""The result of one access, simulator -> guest (16 bytes)."""

# struct twins of the two bodies for the per-access path (same layout, pinned by tests).
ACCESS_STRUCT = struct.Struct("<BBBBIQQ")
ACCESS_REPLY_STRUCT = struct.Struct("<iB3xQ")
_HEADER = struct.Struct("<IB")


def encode_json(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _HEADER.pack(len(body) + 1, KIND_JSON) + body


def encode_binary(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(len(body) + 1, kind) + body


class FrameDecoder:
    """Bytes and descriptors in, (kind, body) frames out; no I/O."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.fds: deque[int] = deque()

    def feed(self, data: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        self._buf += data
        self.fds.extend(fds)

    def next_frame(self) -> tuple[int, bytes] | None:
        if len(self._buf) < _HEADER.size:
            return None
        length, kind = _HEADER.unpack_from(self._buf)
        if not 1 <= length <= MAX_FRAME:
            raise WireError(f"frame length {length} outside 1..{MAX_FRAME}")
        end = 4 + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[5:end])
        del self._buf[:end]
        return kind, body

    def take_fds(self, n: int) -> list[int]:
        if len(self.fds) < n:
            raise WireError(f"frame announced {n} descriptors, {len(self.fds)} arrived")
        return [self.fds.popleft() for _ in range(n)]

    def close_fds(self) -> None:
        import os

        while self.fds:
            os.close(self.fds.popleft())


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"bad JSON body: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("JSON body is not an object")
    return obj


def _fds_cmsg(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def _parse_cmsgs(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, type_, data in ancdata:
        if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


_ANCBUF = socket.CMSG_SPACE(MAX_FDS * 4)
_RECV = 65536


class SyncChannel:
    """Blocking frames over a connected stdlib Unix socket (guest and control clients)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()

    def send(self, frame: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        if fds:
            sent = self.sock.sendmsg([frame], _fds_cmsg(list(fds)))
            frame = frame[sent:]
        if frame:
            self.sock.sendall(frame)

    def receive(self) -> tuple[int, bytes]:
        while (frame := self.decoder.next_frame()) is None:
            data, anc, _flags, _addr = self.sock.recvmsg(_RECV, _ANCBUF)
            if not data:
                raise WireError("connection closed by the simulator")
            self.decoder.feed(data, _parse_cmsgs(anc))
        return frame

    def close(self) -> None:
        self.decoder.close_fds()
        self.sock.close()


class AsyncChannel:
    """Frames over a connected trio Unix socket; `receive` returns None at EOF."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self._send_lock = trio.Lock()

    async def send(self, frame: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        async with self._send_lock:
            view = memoryview(frame)
            if fds:
                sent = await self.sock.sendmsg([view], _fds_cmsg(list(fds)))
                view = view[sent:]
            while view:
                sent = await self.sock.send(view)
                view = view[sent:]

    async def receive(self) -> tuple[int, bytes] | None:
        while (frame := self.decoder.next_frame()) is None:
            data, anc, _flags, _addr = await self.sock.recvmsg(_RECV, _ANCBUF)
            if not data:
                return None
            self.decoder.feed(data, _parse_cmsgs(anc))
        return frame

    def close(self) -> None:
        self.decoder.close_fds()
        self.sock.close()
