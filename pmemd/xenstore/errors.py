"""The xenstore exception tree.

::

    XenstoreError
    ├── ProtocolError
    │   ├── LocalProtocolError    we were asked to build a message the wire cannot carry
    │   └── RemoteProtocolError   the peer sent bytes that break xs_wire.h framing
    ├── ConnectionClosedError     the socket went away; raised to every pending caller
    └── XenstoreErrnoError        xenstored answered XS_ERROR "<ERRNO>" (``errno_name``)
        ├── NoEntryError              ENOENT
        ├── AccessDeniedError         EACCES, EPERM
        ├── TransactionConflictError  EAGAIN: retry the whole transaction
        ├── ExistsError               EEXIST
        ├── InvalidArgumentError      EINVAL
        └── QuotaError                EQUOTA (oxenstored), E2BIG, ENOSPC (C xenstored)

xenstored reports errors as errno *names* on the wire ("for portability", xs_wire.h), so the
name is the identity here; ``errno`` is the host's number for it, when the host has one.
"""

from __future__ import annotations

import errno as _errno


class XenstoreError(Exception):
    """Base of every error raised by :mod:`pmemd.xenstore`."""


class ProtocolError(XenstoreError):
    """Bytes that do not follow xs_wire.h."""


class LocalProtocolError(ProtocolError):
    """We tried to encode something the wire cannot carry (our caller's bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the framing; the connection cannot continue."""


class ConnectionClosedError(XenstoreError):
    """The connection to xenstored is gone; no reply will ever arrive."""


class XenstoreErrnoError(XenstoreError):
    """xenstored refused a request with an errno name (an XS_ERROR reply)."""

    def __init__(self, errno_name: str, detail: str = "") -> None:
        self.errno_name = errno_name
        self.errno: int | None = getattr(_errno, errno_name, None)
        self.detail = detail
        super().__init__(f"{errno_name}: {detail}" if detail else errno_name)


class NoEntryError(XenstoreErrnoError):
    """ENOENT: the node (or transaction id) does not exist."""


class AccessDeniedError(XenstoreErrnoError):
    """EACCES/EPERM: the connection's domain lacks the permission."""


class TransactionConflictError(XenstoreErrnoError):
    """EAGAIN at transaction end: something the transaction touched changed; retry it."""


class ExistsError(XenstoreErrnoError):
    """EEXIST: e.g. the same watch (path, token) registered twice."""


class InvalidArgumentError(XenstoreErrnoError):
    """EINVAL: malformed path, payload or request type."""


class QuotaError(XenstoreErrnoError):
    """A per-domain or per-connection limit was hit."""


_BY_NAME: dict[str, type[XenstoreErrnoError]] = {
    "ENOENT": NoEntryError,
    "EACCES": AccessDeniedError,
    "EPERM": AccessDeniedError,
    "EAGAIN": TransactionConflictError,
    "EEXIST": ExistsError,
    "EINVAL": InvalidArgumentError,
    "EQUOTA": QuotaError,
    "E2BIG": QuotaError,
    "ENOSPC": QuotaError,
}


def error_for(errno_name: str, detail: str = "") -> XenstoreErrnoError:
    """The most specific exception for an XS_ERROR errno name (unknown names stay generic)."""
    return _BY_NAME.get(errno_name, XenstoreErrnoError)(errno_name, detail)
