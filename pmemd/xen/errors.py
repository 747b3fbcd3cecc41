"""Errors of the hypervisor interfaces.

    HypervisorError (OSError)   a call failed; .errno is the errno Xen would return
     └── DomainCrashed          the domain crashed, shut down or was destroyed
    ProtocolError               the peer broke the wire protocol (its fault or our bug)
"""

from __future__ import annotations

import errno as _errno


class HypervisorError(OSError):
    """A hypervisor call failed with an errno-like code (ENOSPC, EEXIST, ENOENT...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, f"{_errno.errorcode.get(code, code)}: {message}")
        self.message = message

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno or 0, str(self.errno))


class DomainCrashed(HypervisorError):
    """The guest access could not complete: the domain is crashed, shut down or gone."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ESRCH, message)


class ProtocolError(Exception):
    """Malformed frame or reply on the simulator socket."""
