"""DIMM security operator commands (pmemd's own): read and reset the Intel security state.

    pmemd-query-security {slot?}   each DIMM's security state as the guest's fn 19 reads it,
                                   with the attempt counts and the overwrite's progress
    pmemd-reset-security {slot}    factory reset: no user passphrase, master passphrase back
                                   to zeros, unlocked, thawed, counts cleared; saved at once

No command reads or sets a passphrase: the daemon keeps only salted digests
(`pmemd.dsm.security`), and an operator who must recover a DIMM resets it.
"""

from __future__ import annotations

from typing import Any

from pmemd.dsm.security import ATTEMPT_LIMIT, Overwrite, Security

from .control import GuestControl
from .errors import QmpError
from .registry import command
from .schema import Param


def security_info(slot: int, family: str, sec: Security) -> dict[str, Any]:
    """One DIMM's security as an operator reads it (never a passphrase or digest)."""
    if family != "intel":
        return {"slot": slot, "id": f"nvdimm{slot}", "state": "unsupported"}
    if not sec.enabled:
        state = "disabled"
    else:
        state = "locked" if sec.locked else "unlocked"
    return {
        "slot": slot,
        "id": f"nvdimm{slot}",
        "state": state,
        "frozen": sec.frozen,
        "media-refused": sec.media_refused,
        "passphrase-attempts": sec.user_attempts,
        "attempt-limit": ATTEMPT_LIMIT,
        "attempt-limit-reached": sec.user_limit,
        "master": {
            "enabled": sec.master_enabled,
            "passphrase": "set" if sec.master is not None else "factory",
            "attempts": sec.master_attempts,
            "attempt-limit-reached": sec.master_limit,
        },
        "overwrite": {
            "state": {Overwrite.IDLE: "idle", Overwrite.RUNNING: "running", Overwrite.DONE: "complete"}[sec.overwrite],
            "progress": round(sec.overwrite_progress, 4) if sec.overwrite is not Overwrite.IDLE else 0.0,
        },
    }


@command("pmemd-query-security", Param("slot", "int", required=False, hi=255))
def query_security(ctl: GuestControl, slot: int | None = None) -> list[dict[str, Any]]:
    """Each DIMM's security state (or one slot's)."""
    slots = sorted(ctl.dimms) if slot is None else [slot]
    out = []
    for s in slots:
        dimm = ctl.dimm(s)
        out.append(security_info(s, dimm.config.family, dimm.security))
    return out


@command("pmemd-reset-security", Param("slot", "int", hi=255))
def reset_security(ctl: GuestControl, slot: int) -> dict[str, Any]:
    """Factory-reset a DIMM's security (passphrases, lock, freeze, counts); refused mid-overwrite."""
    dimm = ctl.dimm(slot)
    if dimm.config.family != "intel":
        raise QmpError(f"NVDIMM slot {slot} has the {dimm.config.family} family: it has no security state")
    try:
        dimm.security.reset()
    except ValueError as e:
        raise QmpError(f"cannot reset slot {slot}'s security: {e}") from None
    if ctl.save_security is not None:
        try:
            ctl.save_security(slot)
        except OSError as e:
            raise QmpError(f"slot {slot}'s security was reset but not saved: {e.strerror or e}") from None
    return {}
