"""What a `_DSM` handler sees and returns: the decoded call, the reply, the status codes.

Handlers are plain functions `handle(call, device) -> Reply`. They parse their input with
`parse_input`, which turns any malformed payload into `InvalidInput`; the dispatcher answers
that with status 3, so a handler never has to catch construct errors itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from construct import Construct, ConstructError, Int32ul

from acpi import dsm_buffer


class Status(IntEnum):
    """The first u32 of every reply but function 0's (QEMU's codes, plus hardware error).

    `Reply.status` stays a plain int: Intel replies may carry extended status in the upper
    16 bits, which an enum would lose.
    """

    SUCCESS = dsm_buffer.STATUS_SUCCESS
    NOT_SUPPORTED = dsm_buffer.STATUS_NOT_SUPPORTED
    NO_SUCH_DEVICE = dsm_buffer.STATUS_NO_SUCH_DEVICE
    INVALID_INPUT = dsm_buffer.STATUS_INVALID_INPUT
    HARDWARE_ERROR = dsm_buffer.STATUS_HARDWARE_ERROR


StatusField = Int32ul
"""The status word that opens a reply payload."""

MAX_OUTPUT = dsm_buffer.MAX_PAYLOAD - StatusField.sizeof()
"""The most output bytes a reply can carry after its status word (4088)."""


@dataclass(frozen=True)
class Call:
    """One decoded `_DSM` request; `input` is a private copy the guest cannot change."""

    handle: int
    revision: int
    function: int
    input: bytes


@dataclass(frozen=True)
class Reply:
    """A handler's answer: the status word and the output bytes that follow it."""

    status: int
    output: bytes = b""

    @classmethod
    def success(cls, output: bytes = b"") -> Reply:
        return cls(Status.SUCCESS, output)

    @classmethod
    def failure(cls, status: Status) -> Reply:
        return cls(status)


D = TypeVar("D")

Handler = Callable[[Call, D], Reply]
"""`handle(call, device) -> Reply`: pure, storage reached only through `device`."""


class InvalidInput(Exception):
    """The guest's input breaks the function's layout or bounds: answered with status 3."""


def parse_input(layout: Construct, data: bytes) -> Any:
    """Parse guest input with `layout` (which must end in `Terminated`).

    Errors: any construct error (too short, too long, failed `Check`) becomes `InvalidInput`.
    """
    try:
        return layout.parse(data)
    except ConstructError as e:
        raise InvalidInput(str(e)) from None
