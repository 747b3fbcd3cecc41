"""QMP protocol + command layer: a client's bytes → the replies and events it would read.

Input: the bytes one client sends, then end-of-file. Each event of the sans-I/O
`Connection` is answered as the server answers it; commands run through `run_command` against
a `GuestControl` over a fresh guest's real devices (save files go to a private temporary
directory, under the file name the client gave).
Contract: nothing raises except `QmpError` from `run_command` (ALLOWED; the server answers it
as an error reply) — any other exception is what the server would answer as "internal error"
with a traceback, a finding. Every reply and event frame is one line of JSON.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from fuzz.contract import Finding
from fuzz.guest import CONFIG, fresh
from pmemd.daemon.savefile import GuestStateFiles
from pmemd.qmp import nvdimm_commands, vm_commands  # noqa: F401  (register the commands)
from pmemd.qmp.control import GuestControl
from pmemd.qmp.early import version_info
from pmemd.qmp.errors import QmpError
from pmemd.qmp.protocol import CLOSED, NEED_DATA, Command, Connection, Negotiated, Refused
from pmemd.qmp.registry import run_command

ALLOWED: tuple[type[BaseException], ...] = ()  # QmpError is caught and answered below, as the server does
MAX_EVENTS = 64

_SANDBOX = Path(tempfile.mkdtemp(prefix="pmemd-fuzz-qmp-"))


class SandboxedStateFiles:
    """The real save/load, with the file name kept and its directory replaced by the sandbox."""

    def __init__(self, inner: GuestStateFiles) -> None:
        self.inner = inner

    def save(self, path: Path) -> int:
        return self.inner.save(_SANDBOX / (path.name or "unnamed"))

    def load(self, path: Path) -> tuple[int, int]:
        return self.inner.load(_SANDBOX / (path.name or "unnamed"))


def check_frame(frame: bytes) -> None:
    if not frame.endswith(b"\r\n") or b"\n" in frame[:-1]:
        raise Finding(f"frame is not one line: {frame[:80]!r}")
    json.loads(frame)


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a command's coroutine; ours complete without suspending (no hypervisor here)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise Finding("command suspended with no hypervisor to wait for")


def control_for(conn: Connection) -> GuestControl:
    guest = fresh()
    handlers = guest.handlers
    dimms = dict(handlers.dimms)

    async def set_serving(serving: bool) -> None:
        return None

    def emit(name: str, data: Mapping[str, Any] | None) -> None:
        frame = conn.event_bytes(name, data, 0, 0)
        if frame:
            check_frame(frame)

    return GuestControl(CONFIG, handlers.root, dimms, guest.labels, set_serving, emit=emit,
                        request_quit=lambda: None,
                        state_files=SandboxedStateFiles(GuestStateFiles(CONFIG, handlers.root, dimms.values())))


def run(data: bytes) -> None:
    conn = Connection(version_info())
    control = control_for(conn)
    check_frame(conn.greeting_bytes())
    conn.receive_data(data)
    conn.receive_data(b"")
    for _ in range(MAX_EVENTS):
        event = conn.next_event()
        if event is CLOSED:
            return
        if event is NEED_DATA:
            raise Finding("NEED_DATA after end-of-file")
        if isinstance(event, Refused):
            frame = conn.error_bytes(event.error, event.id)
        elif isinstance(event, Negotiated):
            frame = conn.reply_bytes({}, event.id)
        else:
            assert isinstance(event, Command)
            try:
                frame = conn.reply_bytes(run_sync(run_command(control, event.name, event.arguments)), event.id)
            except QmpError as e:
                frame = conn.error_bytes(e, event.id)
        check_frame(frame)
