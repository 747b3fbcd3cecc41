"""QMP, the server side, with no I/O: bytes in (`receive_data`), events out (`next_event`), bytes to send.

Framing (QEMU's json-streamer, reference qmp-spec "Wire protocol"): the input is a stream of
JSON values, newlines optional. A value starting with `{` or `[` ends where its brackets
balance; anything else at the top level is a run of garbage that ends at a newline or at the
next `{`. Each completed value becomes one event, so one bad message costs one error reply
and the connection goes on. Bounds a hostile peer cannot pass: a value longer than
`max_message` bytes, nested deeper than `MAX_NESTING`, or a string holding a raw control
character is refused as soon as it is seen, and the rest of it is skipped without buffering.

Phases (qmp-spec "Capabilities Negotiation"): the server greets, the connection is in
NEGOTIATING until `qmp_capabilities`, where every other command is CommandNotFound; then in
COMMAND, where `qmp_capabilities` is CommandNotFound and events may be sent. The core checks
the command object's members (QEMU's `qmp_dispatch_check_obj`) and echoes `id` on every reply
to an input that had one, errors included.
"""

from __future__ import annotations

import enum
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import QmpError, command_not_found

MAX_MESSAGE = 64 << 10
"""Bytes in one JSON value from a client; QMP commands are a few hundred."""

MAX_NESTING = 32
"""Brackets deep; no QMP argument we take nests beyond 2."""

NO_ID: Final = object()
"""The `id` of an input that had none (a JSON null id is echoed as null)."""


class Phase(enum.Enum):
    NEGOTIATING = "negotiating"
    COMMAND = "command"


class _Need(enum.Enum):
    NEED_DATA = "need-data"
    CLOSED = "closed"


NEED_DATA: Final = _Need.NEED_DATA
"""`next_event` needs more bytes (`receive_data`) before it can say more."""
CLOSED: Final = _Need.CLOSED
"""The peer sent end-of-file and every complete value was handed out."""


@dataclass(frozen=True)
class Command:
    """A well-formed command, in COMMAND phase, for the shell to run and answer."""

    name: str
    arguments: Mapping[str, Any]
    id: object = NO_ID


@dataclass(frozen=True)
class Refused:
    """Input the core refused; the shell answers `error` (echoing `id`) and reads on."""

    error: QmpError
    id: object = NO_ID


@dataclass(frozen=True)
class Negotiated:
    """`qmp_capabilities` accepted: the shell answers `{"return": {}}`; events may flow."""

    id: object = NO_ID
    enabled: tuple[str, ...] = ()


Event = Command | Refused | Negotiated

_TOP_WS = b" \t\r\n"
_STRUCTURAL = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\\x00-\x1f]')
_GARBAGE_END = re.compile(rb"[\n{]")


class _Mode(enum.Enum):
    TOP = 0
    VALUE = 1  # inside an object or array, buffering
    GARBAGE = 2  # a top-level run that is not an object or array
    SKIP_VALUE = 3  # inside a refused value, not buffering
    SKIP_GARBAGE = 4  # inside a refused garbage run, not buffering


@dataclass
class _Splitter:
    """Cuts the byte stream into complete values (bytes) and framing errors (QmpError)."""

    max_message: int
    out: deque[bytes | QmpError] = field(default_factory=deque)
    mode: _Mode = _Mode.TOP
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.mode is _Mode.TOP:
                c = data[i]
                if c in _TOP_WS:
                    i += 1
                elif c in b"{[":
                    self.mode, self.depth, self.in_string, self.escaped = _Mode.VALUE, 0, False, False
                    self.buf.clear()
                else:
                    self.mode = _Mode.GARBAGE
                    self.buf.clear()
            elif self.mode in (_Mode.GARBAGE, _Mode.SKIP_GARBAGE):
                i = self._garbage(data, i)
            else:
                i = self._value(data, i)

    def _garbage(self, data: bytes, i: int) -> int:
        m = _GARBAGE_END.search(data, i)
        end = m.start() if m else len(data)
        if self.mode is _Mode.GARBAGE:
            self.buf += data[i:end]
            if len(self.buf) > self.max_message:
                self._refuse(_Mode.SKIP_GARBAGE, f"JSON parse error, input longer than {self.max_message} bytes")
        if m is None:
            return end
        if self.mode is _Mode.GARBAGE:
            self.out.append(_garbage_error(bytes(self.buf)))
        self.buf.clear()
        self.mode = _Mode.TOP
        return end + (data[end] == 0x0A)  # a newline ends the run; a `{` starts the next value

    def _value(self, data: bytes, i: int) -> int:
        start, n = i, len(data)
        keep = self.mode is _Mode.VALUE
        while i < n:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                    i += 1
                    continue
                m = _IN_STRING.search(data, i)
                if m is None:
                    i = n
                    break
                i = m.end()
                c = data[m.start()]
                if c == 0x22:
                    self.in_string = False
                elif c == 0x5C:
                    self.escaped = True
                else:  # a raw control character: QEMU's lexer refuses it and resynchronises
                    if keep:
                        self.out.append(QmpError("JSON parse error, control character in a string"))
                    self.buf.clear()
                    self.mode = _Mode.TOP
                    return i
                continue
            m = _STRUCTURAL.search(data, i)
            if m is None:
                i = n
                break
            i = m.end()
            c = data[m.start()]
            if c == 0x22:
                self.in_string = True
            elif c in b"{[":
                self.depth += 1
                if self.depth > MAX_NESTING and keep:
                    self.buf += data[start:i]
                    self._refuse(_Mode.SKIP_VALUE, f"JSON parse error, nesting deeper than {MAX_NESTING}")
                    keep, start = False, i
            else:
                self.depth -= 1
                if self.depth == 0:
                    if keep:
                        self.buf += data[start:i]
                        if len(self.buf) <= self.max_message:
                            self.out.append(bytes(self.buf))
                        else:
                            self.out.append(_too_long(self.max_message))
                    self.buf.clear()
                    self.mode = _Mode.TOP
                    return i
        if keep:
            self.buf += data[start:i]
            if len(self.buf) > self.max_message:
                self._refuse(_Mode.SKIP_VALUE, _too_long(self.max_message).desc)
        return i

    def _refuse(self, mode: _Mode, desc: str) -> None:
        self.out.append(QmpError(desc))
        self.buf.clear()
        self.mode = mode


def _too_long(limit: int) -> QmpError:
    return QmpError(f"JSON parse error, input longer than {limit} bytes")


def _garbage_error(run: bytes) -> QmpError:
    try:
        json.loads(run, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        shown = run[:32].decode("utf-8", "replace")
        return QmpError(f"JSON parse error, invalid input {shown!r}")
    return QmpError("QMP input must be a JSON object")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_COMMAND_MEMBERS = frozenset({"execute", "arguments", "id"})


class Connection:
    """One client's QMP session, server side.

    Usage (the shell): send `greeting_bytes()`, then loop `receive_data(chunk)` and
    `next_event()` until NEED_DATA, answering each event with `reply_bytes`/`error_bytes`;
    `event_bytes` frames asynchronous events (empty before negotiation).
    """

    def __init__(self, greeting: Mapping[str, Any], *, capabilities: tuple[str, ...] = (),
                 max_message: int = MAX_MESSAGE) -> None:
        self.phase = Phase.NEGOTIATING
        self.capabilities = capabilities
        self._greeting = {"QMP": {"version": dict(greeting), "capabilities": list(capabilities)}}
        self._splitter = _Splitter(max_message)
        self._eof = False

    # -- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means end-of-file."""
        if not data:
            self._eof = True
            return
        self._splitter.feed(data)

    def next_event(self) -> Event | _Need:
        """The next thing the shell must answer, NEED_DATA, or CLOSED after end-of-file."""
        out = self._splitter.out
        if not out:
            return CLOSED if self._eof else NEED_DATA
        item = out.popleft()
        if isinstance(item, QmpError):
            return Refused(item)
        try:
            value = json.loads(item, parse_constant=_no_constant)
        except UnicodeDecodeError:
            return Refused(QmpError("JSON parse error, input is not UTF-8"))
        except (ValueError, RecursionError) as e:
            return Refused(QmpError(f"JSON parse error, {e}"))
        return self._command(value)

    def _command(self, value: object) -> Event:
        if not isinstance(value, dict):
            return Refused(QmpError("QMP input must be a JSON object"))
        msg_id = value.get("id", NO_ID)
        if "exec-oob" in value:
            return Refused(QmpError("QMP input member 'exec-oob' is unexpected: out-of-band execution is not offered"),
                           msg_id)
        for key in value:
            if key not in _COMMAND_MEMBERS:
                return Refused(QmpError(f"QMP input member '{key}' is unexpected"), msg_id)
        if "execute" not in value:
            return Refused(QmpError("QMP input lacks member 'execute'"), msg_id)
        name = value["execute"]
        if not isinstance(name, str):
            return Refused(QmpError("QMP input member 'execute' must be a string"), msg_id)
        arguments = value.get("arguments", {})
        if not isinstance(arguments, dict):
            return Refused(QmpError("QMP input member 'arguments' must be an object"), msg_id)
        if name == "qmp_capabilities":
            return self._negotiate(arguments, msg_id)
        if self.phase is Phase.NEGOTIATING:
            return Refused(command_not_found("Expecting capabilities negotiation with 'qmp_capabilities'"), msg_id)
        return Command(name, arguments, msg_id)

    def _negotiate(self, arguments: dict[str, Any], msg_id: object) -> Event:
        if self.phase is Phase.COMMAND:
            return Refused(command_not_found("Capabilities negotiation is already complete, command ignored"), msg_id)
        for key in arguments:
            if key != "enable":
                return Refused(QmpError(f"Parameter '{key}' is unexpected"), msg_id)
        enable = arguments.get("enable", [])
        if not isinstance(enable, list) or not all(isinstance(c, str) for c in enable):
            return Refused(QmpError("Invalid parameter type for 'enable', expected: array of strings"), msg_id)
        for cap in enable:
            if cap not in self.capabilities:
                return Refused(QmpError(f"Capability '{cap}' not available"), msg_id)
        self.phase = Phase.COMMAND
        return Negotiated(msg_id, tuple(enable))

    # -- output ------------------------------------------------------------------------

    def greeting_bytes(self) -> bytes:
        return _frame(self._greeting)

    def reply_bytes(self, value: object, msg_id: object = NO_ID) -> bytes:
        return _frame(_with_id({"return": value}, msg_id))

    def error_bytes(self, error: QmpError, msg_id: object = NO_ID) -> bytes:
        return _frame(_with_id({"error": error.as_wire()}, msg_id))

    def event_bytes(self, name: str, data: Mapping[str, Any] | None, seconds: int, microseconds: int) -> bytes:
        """An event message; b"" while negotiating (the spec sends none before `qmp_capabilities`)."""
        if self.phase is not Phase.COMMAND:
            return b""
        msg: dict[str, Any] = {"event": name}
        if data is not None:
            msg["data"] = dict(data)
        msg["timestamp"] = {"seconds": seconds, "microseconds": microseconds}
        return _frame(msg)


def _with_id(msg: dict[str, Any], msg_id: object) -> dict[str, Any]:
    if msg_id is not NO_ID:
        msg["id"] = msg_id
    return msg


def _frame(msg: Mapping[str, Any]) -> bytes:
    return json.dumps(msg, separators=(", ", ": ")).encode() + b"\r\n"
