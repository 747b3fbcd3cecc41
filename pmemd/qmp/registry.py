"""The command table: each command's name, parameters, handler and one-line doc.

Handlers take the `GuestControl` and the checked arguments as keywords and return the
`return` value (or an awaitable of it, for commands that talk to the hypervisor); they raise
`QmpError` for a refusal. `query-commands` lists this table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .control import GuestControl
from .errors import command_not_found
from .schema import Param, check_arguments

Handler = Callable[..., Any]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    params: tuple[Param, ...]
    handler: Handler
    doc: str


COMMANDS: dict[str, CommandSpec] = {}


def command(name: str, *params: Param) -> Callable[[Handler], Handler]:
    """Register the decorated function as QMP command `name`."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"QMP command {name} registered twice")
        doc = (handler.__doc__ or "").strip().splitlines()
        COMMANDS[name] = CommandSpec(name, params, handler, doc[0] if doc else "")
        return handler

    return register


async def run_command(ctl: GuestControl, name: str, arguments: Mapping[str, Any]) -> Any:
    """The `return` value of command `name`. Errors: `QmpError` (CommandNotFound, GenericError, ...)."""
    spec = COMMANDS.get(name)
    if spec is None:
        raise command_not_found(f"The command {name} has not been found")
    result = spec.handler(ctl, **check_arguments(spec.params, arguments))
    if inspect.isawaitable(result):
        result = await result
    return result
