"""Test harness for QMP: the real `qemu.qmp` client (asyncio) driven from trio tests.

The daemon runs in the test's trio loop (`serve_guest`, every real setup step, on the
simulator); `qemu.qmp`'s `QMPClient` runs on an asyncio loop in a helper thread, and each
call is handed over with `run_coroutine_threadsafe` and awaited through `trio.to_thread`, so
the daemon keeps serving while the client waits. Bounded by CALL_TIMEOUT, never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio
from qemu.qmp import EventListener, QMPClient

CALL_TIMEOUT = 20.0
T = TypeVar("T")




class AsyncioThread:
    """An asyncio loop in a thread, for running `qemu.qmp` beside trio."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="qemu.qmp", daemon=True)
        self.thread.start()

    async def run(self, make: Callable[[], Awaitable[T]], timeout: float = CALL_TIMEOUT) -> T:
        async def wrapped() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return await trio.to_thread.run_sync(future.result, timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclass
class Qmp:
    """One negotiated `QMPClient` with an event listener registered from the start."""

    aio: AsyncioThread
    client: QMPClient
    events: EventListener

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return await self.aio.run(lambda: self.client.execute(command, arguments))

    async def event(self, name: str) -> dict[str, Any]:
        """The next event called `name` (others received meanwhile are skipped)."""

        async def wait() -> dict[str, Any]:
            while True:
                event = await self.events.get()
                if event["event"] == name:
                    return dict(event)

        return await self.aio.run(wait)

    @property
    def greeting(self) -> dict[str, Any]:
        assert self.client.greeting is not None
        return self.client.greeting._asdict()


@contextlib.asynccontextmanager
async def connect(path: Path) -> AsyncIterator[Qmp]:
    """A `qemu.qmp` client connected and negotiated (`qmp_capabilities`) on `path`."""
    aio = AsyncioThread()
    try:
        client = QMPClient("pmemd-test")
        listener = EventListener()
        client.register_listener(listener)
        await aio.run(lambda: client.connect(str(path)))
        try:
            yield Qmp(aio, client, listener)
        finally:
            with trio.CancelScope(shield=True):
                await aio.run(lambda: _disconnect(client))
    finally:
        aio.close()


async def _disconnect(client: QMPClient) -> None:
    """Disconnect; a server that already closed (after `quit`) is not an error here."""
    with contextlib.suppress(EOFError, ConnectionError):
        await client.disconnect()
