"""xenstore wire: the bytes of a connection → messages and their payload fields.

Input: a byte stream, fed to `MessageReader` in two pieces (split where the first byte says).
Each message's payload is decoded as every request shape (strings, write, permissions) and the
message is re-encoded.
Contract: only `RemoteProtocolError` (ALLOWED: the peer broke the protocol; the server answers
EINVAL or drops the connection) — and a decoded message re-encodes to exactly its input bytes.
"""

from __future__ import annotations

from fuzz.contract import Finding
from pmemd.xenstore.errors import RemoteProtocolError
from pmemd.xenstore.wire import HEADER_SIZE, Message, MessageReader, NeedData, decode_perms, decode_strings, decode_write

ALLOWED: tuple[type[BaseException], ...] = (RemoteProtocolError,)
MAX_MESSAGES = 64


def decode_fields(msg: Message) -> None:
    for decode in (decode_strings, decode_write, decode_perms):
        try:
            decode(msg.payload)
        except RemoteProtocolError:
            pass


def run(data: bytes) -> None:
    reader = MessageReader()
    cut = data[0] % (len(data) + 1) if data else 0
    consumed = 0
    for piece in (data[:cut], data[cut:]):
        if not piece:
            continue  # b"" is end-of-file to the reader
        reader.receive_data(piece)
        for _ in range(MAX_MESSAGES):
            msg = reader.next_message()
            if isinstance(msg, NeedData):
                break
            size = HEADER_SIZE + len(msg.payload)
            if msg.encode() != data[consumed : consumed + size]:
                raise Finding("message does not re-encode to its bytes")
            consumed += size
            decode_fields(msg)
