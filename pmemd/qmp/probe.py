"""A blocking, stdlib-only QMP health probe: what a container HEALTHCHECK runs (`pmemd qmp-health`)."""

from __future__ import annotations

import json
import os
import socket


def qmp_status(path: str | os.PathLike[str], *, timeout: float = 5.0) -> dict[str, object]:
    """One QMP exchange as a health check would make it: greeting, `qmp_capabilities`,
    `query-status`; returns the status reply's `return`. Blocking and stdlib-only, so a
    container HEALTHCHECK starts fast. Errors: `OSError` (no socket, timeout) or
    `ValueError` (not QMP, or an error reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        lines = sock.makefile("rwb")

        def reply() -> dict[str, object]:
            while True:
                raw = lines.readline(1 << 20)
                if not raw:
                    raise ValueError("QMP connection closed")
                message = json.loads(raw)
                if "event" not in message:  # asynchronous events may come first
                    return message

        if "QMP" not in reply():
            raise ValueError("no QMP greeting")
        for command in ("qmp_capabilities", "query-status"):
            lines.write(json.dumps({"execute": command}).encode() + b"\n")
            lines.flush()
            answer = reply()
            if "return" not in answer:
                raise ValueError(f"{command}: {answer.get('error', answer)}")
        return answer["return"]  # type: ignore[return-value]
