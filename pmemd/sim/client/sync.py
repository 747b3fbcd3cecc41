"""Blocking request/reply over the simulator socket, shared by the sync clients."""

from __future__ import annotations

import os
import socket
from typing import Any

from pmemd.sim import wire
from pmemd.sim.client.replies import decode_reply, protocol_error, raise_for_reply
from pmemd.sim.errors import WireError


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
            reply = decode_reply(*self.channel.receive(), self.channel.decoder)
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
