"""xenstore: the xs_wire.h protocol (sans-I/O, :mod:`.wire`), a trio client (:mod:`.client`)
and the error tree (:mod:`.errors`). The embedded daemon lives in :mod:`pmemd.xenstored.server`."""

from pmemd.xenstore.client import Transaction, WatchEvent, XenstoreClient, open_client
from pmemd.xenstore.errors import (
    AccessDeniedError,
    ConnectionClosedError,
    ExistsError,
    InvalidArgumentError,
    LocalProtocolError,
    NoEntryError,
    ProtocolError,
    QuotaError,
    RemoteProtocolError,
    TransactionConflictError,
    XenstoreErrnoError,
    XenstoreError,
)
from pmemd.xenstore.wire import Access, Message, MsgType, Perm

__all__ = [
    "Access",
    "AccessDeniedError",
    "ConnectionClosedError",
    "ExistsError",
    "InvalidArgumentError",
    "LocalProtocolError",
    "Message",
    "MsgType",
    "NoEntryError",
    "Perm",
    "ProtocolError",
    "QuotaError",
    "RemoteProtocolError",
    "Transaction",
    "TransactionConflictError",
    "WatchEvent",
    "XenstoreClient",
    "XenstoreErrnoError",
    "XenstoreError",
    "open_client",
]
