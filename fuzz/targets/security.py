"""Intel DIMM security: calls to functions 19-28 and power cycles, in any order, on one DIMM.

Input: a run of records, each `function u8` then `length u8` then `length` payload bytes
(cut short at the end of the input). Function byte 0xFF is a power cycle (a daemon start,
`Security.power_on`); any other byte b calls function 17 + b % 14 (17..30: the ten security
functions and two neighbours on each side) through `security_step`, the pure entry point the
`_DSM` handlers use. An overwrite a call starts is finished before the next record, as the
daemon's overwriter would.
Contract: nothing raises (ALLOWED is empty). After every call: the status is one Linux knows
(`SecurityStatus`); only a success asks for an erase, and only fn 25 for an overwrite; a
failed call leaves the passphrase as it was; a DIMM is never locked without a passphrase; fn
19 answers 8 bytes; the state survives its saved form (`to_bytes`/`from_bytes`) unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

from fuzz.contract import Finding
from pmemd.dsm.security import ATTEMPT_LIMIT, Erase, Overwrite, Security, SecurityStatus, security_step

ALLOWED: tuple[type[BaseException], ...] = ()
POWER_ON = 0xFF
STATUSES = set(SecurityStatus)


def records(data: bytes) -> Iterator[tuple[int, bytes]]:
    i = 0
    while i + 2 <= len(data):
        raw, length = data[i], data[i + 1]
        yield (POWER_ON if raw == POWER_ON else 17 + raw % 14), data[i + 2 : i + 2 + length]
        i += 2 + length


def run(data: bytes) -> None:
    sec = Security()
    for function, payload in records(data):
        if function == POWER_ON:
            sec.power_on()
            continue
        user_before = sec.user
        outcome = security_step(sec, function, payload)
        if outcome.status not in STATUSES:
            raise Finding(f"fn {function} answered status {outcome.status:#x}")
        if outcome.erase is not None and (outcome.status != SecurityStatus.SUCCESS
                                          or (outcome.erase is Erase.OVERWRITE) != (function == 25)):
            raise Finding(f"fn {function} asked for {outcome.erase} with status {outcome.status:#x}")
        if outcome.status != SecurityStatus.SUCCESS and sec.user is not user_before:
            raise Finding(f"failed fn {function} (status {outcome.status:#x}) changed the passphrase")
        if sec.locked and not sec.enabled:
            raise Finding(f"fn {function} left the DIMM locked without a passphrase")
        if function == 19 and outcome.status == SecurityStatus.SUCCESS and len(outcome.output) != 8:
            raise Finding(f"fn 19 answered {len(outcome.output)} bytes")
        if Security.from_bytes(sec.to_bytes()) != _saved_view(sec):
            raise Finding(f"the state after fn {function} does not survive its saved form")
        if sec.overwrite is Overwrite.RUNNING:
            sec.finish_overwrite()


def _saved_view(sec: Security) -> Security:
    """`sec` as its saved form keeps it: progress is not saved, attempt counts stop at the limit."""
    copy = Security(**{**sec.__dict__, "overwrite_progress": 0.0})
    copy.user_attempts = min(copy.user_attempts, ATTEMPT_LIMIT)
    copy.master_attempts = min(copy.master_attempts, ATTEMPT_LIMIT)
    return copy
