"""Debian's xenstore-utils (the C libxenstore) run against our xenstored, which they reach by
$XENSTORED_PATH: the tools judge our server, not our client."""

from __future__ import annotations

import os
import shutil

import pytest
import trio

XENSTORE_TOOLS = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-chmod", "xenstore-rm",
                  "xenstore-watch", "xenstore-list")


def missing_xenstore_tools() -> list[str]:
    return [t for t in XENSTORE_TOOLS if shutil.which(t) is None]


def require_xenstore_tools() -> None:
    """Skip the calling test when a tool is not installed."""
    if missing := missing_xenstore_tools():
        pytest.skip(f"Debian xenstore-utils not installed (missing {', '.join(missing)}; ./dev test installs it)")


def tool_env(socket: str) -> dict[str, str]:
    return {**os.environ, "XENSTORED_PATH": socket}


async def tool(socket: str, *argv: str, check: bool = True) -> trio.Process:
    """Run one Debian xenstore tool against `socket`, output captured."""
    with trio.fail_after(10):
        return await trio.run_process(list(argv), env=tool_env(socket), capture_stdout=True,
                                      capture_stderr=True, check=check)
