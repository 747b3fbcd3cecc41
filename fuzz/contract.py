"""The documented-error contract every fuzz target is checked against.

A target's `run(data)` feeds one input through the real code. It may end normally or raise
one of the target's `ALLOWED` exception types (the documented refusal); anything else —
another exception type, a failed invariant (`Finding`), or a path the daemon only takes on
its own bug (a handler failure it logs as an internal error, `tripwire`) — is a finding.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

TARGET_NAMES = ("dsm", "qmp", "xs_wire", "xs_store", "ioreq", "config", "savefile", "security")


class Finding(AssertionError):
    """An input broke a target's invariant (the message says which)."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    contract: str


def quiet_logs() -> None:
    """Drop log records: a fuzzer logs millions of refusals, and printing them is most of the cost."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
                        logger_factory=structlog.ReturnLoggerFactory())


def load(name: str) -> Target:
    if name not in TARGET_NAMES:
        raise KeyError(f"unknown fuzz target {name!r} (targets: {', '.join(TARGET_NAMES)})")
    module: ModuleType = importlib.import_module(f"fuzz.targets.{name}")
    return Target(name, module.run, module.ALLOWED, (module.__doc__ or "").strip())


def replay(target: Target, data: bytes) -> BaseException | None:
    """Run one input; return the allowed exception it raised (or None). Findings propagate."""
    with tripwires(), fast_kdf():
        try:
            target.run(data)
        except target.allowed as e:
            return e
    return None


FUZZ_SCRYPT_N = 1 << 4


@contextlib.contextmanager
def fast_kdf() -> Iterator[None]:
    """A cheap scrypt for DIMM passphrases while fuzzing: the security rules do not depend on
    its cost, and the real one (~0.1 s a call) would read as a hang after a few passphrases."""
    from pmemd.dsm import security

    saved = security.SCRYPT_N
    security.SCRYPT_N = FUZZ_SCRYPT_N
    try:
        yield
    finally:
        security.SCRYPT_N = saved


@contextlib.contextmanager
def tripwires() -> Iterator[None]:
    """While active, the daemon's "our own bug" log paths raise `Finding` (see `Tripwire`)."""
    from pmemd.dsm import dispatcher

    saved = dispatcher.log
    dispatcher.log = Tripwire(saved)
    try:
        yield
    finally:
        dispatcher.log = saved


class Tripwire:
    """Stands in for a module's structlog logger: `exception()` — the daemon's "this is our bug,
    answer and keep serving" path — raises a `Finding` instead of logging."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def exception(self, event: str, **fields: Any) -> None:
        raise Finding(f"internal error logged: {event} {fields}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
