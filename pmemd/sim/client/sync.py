"""Blocking request/reply over the simulator socket, shared by the sync clients."""

from __future__ import annotations

import os
import socket
from typing import Any

from pmemd.sim import wire
from pmemd.sim.client.replies import protocol_error, raise_for_reply
from pmemd.sim.errors import WireError
from pmemd.xen.errors import ProtocolError


class SyncClient:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        self.channel = wire.SyncChannel(sock)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.channel.send(wire.encode_json({"op": op, **args}))
        try:
            kind, body = self.channel.receive()
            if kind != wire.KIND_JSON:
                raise ProtocolError(f"unexpected frame kind {kind}")
            reply = wire.decode_json(body)
            nfds = reply.get("nfds", 0)
            reply["fds"] = self.channel.decoder.take_fds(nfds if isinstance(nfds, int) else 0)
        except WireError as exc:
            raise protocol_error(exc) from exc
        try:
            return raise_for_reply(reply)
        except BaseException:
            for fd in reply["fds"]:
                os.close(fd)
            raise

    def close(self) -> None:
        self.channel.close()
