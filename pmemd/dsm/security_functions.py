"""Intel DIMM functions 19-28 (revision 2): security, served from `security.security_step`.

The state machine is pure (`security.py`); this module adds what a call does to the DIMM:
a crypto erase (24, 28) zeroes the PMEM through the DIMM's `PmemStore` before the reply
(labels are kept: ndctl documents `sanitize-dimm --crypto-erase` as leaving label data
alone); an overwrite (25) only starts — the daemon's overwriter (`pmemd.daemon.overwriter`)
zeroes PMEM and labels in the background and calls `Security.finish_overwrite`, which
function 26 then reports.

The erasing functions are offered only by a DIMM with a writable PMEM store; the others by
every Intel DIMM. Passphrases never reach a log: refusals log the status, not the input.
"""

from __future__ import annotations

from .call import Call, Reply
from .devices import Dimm
from .functions import FunctionTable
from .security import (
    FN_MASTER_SECURE_ERASE,
    FN_OVERWRITE,
    FN_SECURE_ERASE,
    SECURITY_FUNCTIONS,
    SECURITY_REVISION,
    Erase,
    security_step,
)

ERASING_FUNCTIONS = frozenset({FN_SECURE_ERASE, FN_OVERWRITE, FN_MASTER_SECURE_ERASE})
ERASE_CHUNK = 8 << 20


def handle_security(call: Call, dimm: Dimm) -> Reply:
    """Any of fns 19-28: the state machine's answer, with a crypto erase carried out first."""
    outcome = security_step(dimm.security, call.function, call.input)
    if outcome.erase is Erase.CRYPTO:
        crypto_erase(dimm)
    return Reply(outcome.status, outcome.output)


def crypto_erase(dimm: Dimm) -> None:
    """Zero the whole PMEM and make it durable (the new media key: old data is gone)."""
    store = dimm.pmem
    if store is None:  # `can_erase` keeps the dispatcher from getting here
        raise RuntimeError(f"DIMM in slot {dimm.config.slot} has no PMEM store")
    for offset in range(0, store.size, ERASE_CHUNK):
        store.zero(offset, min(ERASE_CHUNK, store.size - offset))
    store.flush()


def can_erase(dimm: Dimm) -> bool:
    """Erasing functions need a PMEM store the daemon may write (not an unarmed DIMM)."""
    return dimm.pmem is not None and not dimm.config.unarmed


def register_security_functions(table: FunctionTable[Dimm]) -> None:
    """Add fns 19-28 at revision 2 to an Intel DIMM table."""
    for function in SECURITY_FUNCTIONS:
        if function in ERASING_FUNCTIONS:
            table.register(function, SECURITY_REVISION, handle_security, available=can_erase)
        else:
            table.register(function, SECURITY_REVISION, handle_security)
