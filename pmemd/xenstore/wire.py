"""Sans-I/O core of the xenstore wire protocol (xen/include/public/io/xs_wire.h).

Every message is a 16-byte header -- ``struct xsd_sockmsg { u32 type, req_id, tx_id, len; }``,
little-endian on every Xen host -- followed by ``len`` payload bytes, at most
``XENSTORE_PAYLOAD_MAX``. Payloads are NUL-terminated strings, except the value of XS_WRITE and
the reply of XS_READ (raw bytes, not terminated). Replies echo type, req_id and tx_id; failures
come back as type XS_ERROR with an errno *name* ("ENOENT\\0"). XS_WATCH_EVENT messages arrive
unsolicited with req_id 0.

Nothing here touches a socket: :class:`MessageReader` takes bytes in and hands messages out,
:meth:`Message.encode` turns a message into bytes. The trio client and the embedded xenstored are
thin shells around these.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from construct import ConstructError, Int32ul, Struct

from pmemd.xenstore.errors import LocalProtocolError, RemoteProtocolError

# xs_wire.h: "Violating this is very bad." A length above it means the stream is garbage.
XENSTORE_PAYLOAD_MAX: Final = 4096
# xs_wire.h: "Violating these just gets you an error back."
XENSTORE_ABS_PATH_MAX: Final = 3072
XENSTORE_REL_PATH_MAX: Final = 2048

HEADER = Struct(
    "type" / Int32ul * "enum xsd_sockmsg_type",
    "req_id" / Int32ul * "request identifier, echoed in the daemon's response",
    "tx_id" / Int32ul * "transaction id (0 if not related to a transaction)",
    "len" / Int32ul * "length of data following this header",
)
HEADER_SIZE: Final = HEADER.sizeof()

_U32_MAX: Final = 0xFFFF_FFFF
DOMID_MAX: Final = 0xFFFF  # domid_t is uint16_t


class MsgType(enum.IntEnum):
    """``enum xsd_sockmsg_type``, numbered exactly as xs_wire.h (XS_RESTRICT, 20, was removed)."""

    CONTROL = 0  # formerly XS_DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    INVALID = 0xFFFF  # "Guaranteed to remain an invalid type"


# ``xsd_errors[]`` in xs_wire.h: the names a C libxenstore can map back to a number.
# Anything else (oxenstored's "EQUOTA", C xenstored's "EPERM") reaches a C client as EINVAL.
XSD_ERRORS: Final = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG",
)

OK: Final = b"OK\0"


@dataclass(frozen=True)
class Message:
    """One xenstore message; validated on construction, so an unsendable one cannot exist.

    ``type`` is a :class:`MsgType` when the number is known and a plain ``int`` otherwise, so a
    server can still answer an unknown type with EINVAL (construct's Enum would hide this).
    """

    type: MsgType | int
    req_id: int = 0
    tx_id: int = 0
    payload: bytes = b""

    def __post_init__(self) -> None:
        for name in ("type", "req_id", "tx_id"):
            value = getattr(self, name)
            if not 0 <= value <= _U32_MAX:
                raise LocalProtocolError(f"{name} {value} does not fit in a u32")
        if len(self.payload) > XENSTORE_PAYLOAD_MAX:
            raise LocalProtocolError(
                f"payload of {len(self.payload)} bytes exceeds XENSTORE_PAYLOAD_MAX"
            )
        if not isinstance(self.type, MsgType) and self.type in MsgType._value2member_map_:
            object.__setattr__(self, "type", MsgType(self.type))

    def encode(self) -> bytes:
        """Header plus payload, ready for the socket."""
        header = HEADER.build(
            {"type": int(self.type), "req_id": self.req_id, "tx_id": self.tx_id,
             "len": len(self.payload)}
        )
        return header + self.payload


class NeedData(enum.Enum):
    """Sentinel: :meth:`MessageReader.next_message` needs more bytes (h11's NEED_DATA)."""

    NEED_DATA = enum.auto()


NEED_DATA: Final = NeedData.NEED_DATA


class MessageReader:
    """Incremental framing: feed bytes with :meth:`receive_data`, pull whole messages out.

    The header's ``len`` is checked against XENSTORE_PAYLOAD_MAX as soon as the 16 header bytes
    are in, before any payload is buffered, so a hostile peer can make us hold at most
    16 + 4096 bytes per message. After a :class:`RemoteProtocolError` the reader stays broken:
    the byte stream has no resynchronisation point, so the connection must be dropped.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the peer; ``b""`` means the peer closed its side."""
        if self._eof and data:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._eof = True
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer)

    def next_message(self) -> Message | NeedData:
        """The next complete message, or NEED_DATA.

        Errors: :class:`RemoteProtocolError` for a length above XENSTORE_PAYLOAD_MAX or a stream
        that ends inside a message.
        """
        if self._error is not None:
            raise self._error
        if len(self._buffer) < HEADER_SIZE:
            return self._need_data()
        try:
            header = HEADER.parse(bytes(self._buffer[:HEADER_SIZE]))
        except ConstructError as exc:  # cannot happen with 16 bytes; keep the boundary honest
            raise self._fail(f"unparsable header: {exc}") from exc
        if header.len > XENSTORE_PAYLOAD_MAX:
            raise self._fail(
                f"header announces {header.len} payload bytes, XENSTORE_PAYLOAD_MAX is"
                f" {XENSTORE_PAYLOAD_MAX}"
            )
        end = HEADER_SIZE + header.len
        if len(self._buffer) < end:
            return self._need_data()
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return Message(header.type, header.req_id, header.tx_id, payload)

    def _need_data(self) -> NeedData:
        if self._eof and self._buffer:
            raise self._fail(f"stream ended inside a message ({len(self._buffer)} bytes left)")
        return NEED_DATA

    def _fail(self, reason: str) -> RemoteProtocolError:
        self._error = RemoteProtocolError(reason)
        return self._error


# --------------------------------------------------------------------------------------------
# Payload conventions


def encode_strings(*parts: str) -> bytes:
    """Each part UTF-8 encoded and NUL-terminated: the shape of most request payloads."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        if b"\0" in raw:
            raise LocalProtocolError(f"string {part!r} contains NUL")
        out += raw + b"\0"
    return bytes(out)


def decode_strings(payload: bytes, count: int | None = None) -> list[str]:
    """Split a payload of NUL-terminated UTF-8 strings.

    With ``count``, exactly that many strings must be present. Errors: RemoteProtocolError for a
    missing final NUL, a wrong count or invalid UTF-8.
    """
    if not payload:
        parts: list[bytes] = []
    elif not payload.endswith(b"\0"):
        raise RemoteProtocolError("payload strings are not NUL-terminated")
    else:
        parts = payload[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise RemoteProtocolError(f"expected {count} NUL-terminated strings, got {len(parts)}")
    try:
        return [part.decode() for part in parts]
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"payload string is not UTF-8: {exc}") from exc


def encode_write(path: str, value: bytes) -> bytes:
    """XS_WRITE payload: ``path\\0`` then the raw value (no terminator)."""
    return encode_strings(path) + value


def decode_write(payload: bytes) -> tuple[str, bytes]:
    """Split an XS_WRITE payload into path and value."""
    path, sep, value = payload.partition(b"\0")
    if not sep:
        raise RemoteProtocolError("XS_WRITE payload has no NUL after the path")
    return decode_strings(path + b"\0", 1)[0], value


def encode_error(errno_name: str) -> bytes:
    """XS_ERROR payload: the errno name, NUL-terminated."""
    if not re.fullmatch(r"E[A-Z0-9]+", errno_name):
        raise LocalProtocolError(f"{errno_name!r} is not an errno name")
    return encode_strings(errno_name)


def decode_error(payload: bytes) -> str:
    """The errno name of an XS_ERROR payload."""
    return decode_strings(payload, 1)[0]


# --------------------------------------------------------------------------------------------
# Permissions: "<letter><domid>" strings, the first naming the owner and everyone's default.


class Access(enum.Enum):
    """Access letter of a permission string (xenstore.txt: n = none, r, w, b = both)."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"

    @property
    def can_read(self) -> bool:
        return self in (Access.READ, Access.BOTH)

    @property
    def can_write(self) -> bool:
        return self in (Access.WRITE, Access.BOTH)


_PERM_RE: Final = re.compile(r"([nrwb])([0-9]{1,5})")


@dataclass(frozen=True)
class Perm:
    """One permission entry. In a node's list the first entry is the owner and its access is
    what every domain not listed later gets."""

    domid: int
    access: Access

    def __post_init__(self) -> None:
        if not 0 <= self.domid <= DOMID_MAX:
            raise LocalProtocolError(f"domid {self.domid} out of range")

    def __str__(self) -> str:
        return f"{self.access.value}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Perm:
        """Parse ``n0``, ``r5``, ``w5``, ``b5``. Errors: RemoteProtocolError."""
        match = _PERM_RE.fullmatch(text)
        if match is None or int(match[2]) > DOMID_MAX:
            raise RemoteProtocolError(f"bad permission string {text!r}")
        return cls(int(match[2]), Access(match[1]))


def encode_perms(perms: list[Perm] | tuple[Perm, ...]) -> bytes:
    """XS_SET_PERMS tail / XS_GET_PERMS reply: each entry NUL-terminated."""
    return encode_strings(*(str(p) for p in perms))


def decode_perms(payload: bytes) -> list[Perm]:
    """Parse a GET_PERMS reply; at least the owner entry must be present."""
    perms = [Perm.parse(text) for text in decode_strings(payload)]
    if not perms:
        raise RemoteProtocolError("empty permission list")
    return perms


def domain_path(domid: int) -> str:
    """XS_GET_DOMAIN_PATH answer: the home of a domain's relative paths."""
    return f"/local/domain/{domid}"
