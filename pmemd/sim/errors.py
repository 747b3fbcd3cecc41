"""The simulated hypervisor's errors, as Xen reports them: an errno and a message.

    XenError (OSError)     a hypercall failed; .errno is what Xen would return
     └── DomainDead        the domain crashed, shut down or was destroyed (ESRCH)
    WireError              a peer broke the simulator's wire protocol

The simulator has its own classes so that it owes nothing to the daemon's; on the socket an
error is `{"ok": false, "errno": N, "error": "..."}` (`error_reply`), and `pmemd.sim.client`
turns replies and `WireError` into `pmemd.xen.errors` for the daemon.
"""

from __future__ import annotations

import errno as _errno


class XenError(OSError):
    """A hypercall failed with an errno (ENOSPC, EEXIST, ENOENT...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, f"{_errno.errorcode.get(code, code)}: {message}")
        self.message = message

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno or 0, str(self.errno))


class DomainDead(XenError):
    """A guest access could not complete: the domain is crashed, shut down or gone."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ESRCH, message)


class WireError(Exception):
    """A malformed frame, body or reply on the simulator socket."""


def error_reply(exc: XenError) -> dict[str, object]:
    """The reply frame's body for a failed request."""
    return {"ok": False, "errno": exc.errno, "error": exc.message}
