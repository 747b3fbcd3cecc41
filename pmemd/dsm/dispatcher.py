"""The `_DSM` dispatcher: page bytes in, reply bytes out, no I/O of its own.

Routing, in order (status codes in `call.Status`):
  1. decode from a private copy of the page; an input length over MAX_INPUT → status 3;
  2. the handle picks a target (0 = root, slot + 1 = DIMM); none → status 2;
  3. function 0 → the target's supported-function mask for the call's revision, 4 bytes
     and no status word; its input is ignored (ACPI: Arg3 is unused for function 0). Any
     failure here answers mask 0 ("nothing supported"), since a status word would read
     as a mask (QEMU's status 1 for a revision-2 query reads as "bit 0 set");
  4. a function the target does not offer at that revision → status 1;
  5. the handler's `InvalidInput` → status 3, any other exception → status 4 and a log
     record: a guest can make a call fail, never make the daemon fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic

import structlog

from pmemd.process import logs

from .call import MAX_OUTPUT, Call, D, InvalidInput, Reply, Status
from .functions import FunctionTable
from .page import MalformedRequest, decode_request, encode_mask, encode_status

log = structlog.get_logger()

U32_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class Target(Generic[D]):
    """A handle's device and the function table of its kind."""

    functions: FunctionTable[D]
    device: D


Observer = Callable[[Call], None]
Dispatch = Callable[[bytes], bytes]  # what a front end calls: `Dispatcher.dispatch`


class Phase(IntEnum):
    """When an observer runs after a call, in this order: watchers that only peek at device
    state (QMP's notify watcher), then the effects that drain and publish it (`DsmEffects`)."""

    WATCH = 0
    EFFECTS = 1


class Dispatcher:
    """Serves `_DSM` calls for a fixed set of targets, keyed by NFIT device handle."""

    def __init__(self, targets: Mapping[int, Target[Any]]) -> None:
        self._targets = dict(targets)
        self._observers: dict[Phase, list[Observer]] = {phase: [] for phase in Phase}

    @contextlib.contextmanager
    def observing(self, phase: Phase, observe: Observer) -> Iterator[None]:
        """Run `observe` after each decoded call (before `dispatch` returns) while the block runs."""
        self._observers[phase].append(observe)
        try:
            yield
        finally:
            self._observers[phase].remove(observe)

    def target(self, handle: int) -> Target[Any] | None:
        return self._targets.get(handle)

    def dispatch(self, page: bytes | bytearray | memoryview) -> bytes:
        """Answer the request in `page` (one DSM page) with the reply's bytes.

        The result is the length word followed by the payload, ready to be copied to the
        page's offset 0. Only a page of the wrong size raises (`ValueError`): that is a
        transport bug, not something a guest can cause.
        """
        try:
            call = decode_request(page)
        except MalformedRequest as e:
            logs.refused("dsm-input-length", handle=e.handle, function=e.function, reason=str(e))
            if e.function == 0:
                return encode_mask(0)
            return encode_status(Status.INVALID_INPUT)
        reply = self.answer(call)
        for phase in Phase:
            for observe in self._observers[phase]:
                observe(call)
        return reply

    def answer(self, call: Call) -> bytes:
        """The reply bytes for an already decoded call."""
        if call.function == 0:
            return encode_mask(self.mask(call.handle, call.revision))
        reply = self.call(call)
        return encode_status(reply.status, reply.output)

    def mask(self, handle: int, revision: int) -> int:
        """Function 0: what `handle` offers at `revision` (0 for an unknown handle)."""
        target = self._targets.get(handle)
        if target is None:
            return 0
        try:
            return target.functions.mask(revision, target.device)
        except Exception:
            log.exception("dsm function mask failed", handle=handle, revision=revision)
            return 0

    def call(self, call: Call) -> Reply:
        """Run a non-zero function; every outcome, including a handler bug, is a `Reply`."""
        target = self._targets.get(call.handle)
        if target is None:
            return Reply.failure(Status.NO_SUCH_DEVICE)
        try:
            entry = target.functions.lookup(call.function, call.revision, target.device)
            if entry is None:
                return Reply.failure(Status.NOT_SUPPORTED)
            reply = entry.handler(call, target.device)
            _check_reply(reply)
            return reply
        except InvalidInput as e:
            logs.refused(f"dsm-invalid-input-{call.function}", handle=call.handle, reason=str(e))
            return Reply.failure(Status.INVALID_INPUT)
        except Exception:
            log.exception(
                "dsm handler failed",
                handle=call.handle,
                function=call.function,
                revision=call.revision,
                table=target.functions.name,
            )
            return Reply.failure(Status.HARDWARE_ERROR)


def _check_reply(reply: object) -> None:
    """A handler's reply must fit a status word and the page; otherwise it is a bug."""
    if not isinstance(reply, Reply):
        raise TypeError(f"handler returned {reply!r}, not a Reply")
    if not isinstance(reply.status, int) or not 0 <= reply.status <= U32_MAX:
        raise ValueError(f"status {reply.status!r} does not fit a u32")
    if not isinstance(reply.output, bytes) or len(reply.output) > MAX_OUTPUT:
        raise ValueError(f"output does not fit the page ({MAX_OUTPUT} bytes at most)")
