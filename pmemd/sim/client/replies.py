"""Decoding the simulator's replies into the interface's records and errors.

The simulator reports failures in its own terms (an errno on the wire, `pmemd.sim.errors`
in process); the daemon catches `pmemd.xen.errors`. This is the one place that translates.
"""

from __future__ import annotations

import errno
from typing import Any

from pmemd.sim import wire
from pmemd.sim.errors import WireError
from pmemd.xen.api import DomainInfo
from pmemd.xen.errors import DomainCrashed, HypervisorError, ProtocolError


def raise_for_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """Return a successful reply; raise the HypervisorError an error reply carries."""
    if reply.get("ok") is True:
        return reply
    code = reply.get("errno")
    if not isinstance(code, int):
        raise ProtocolError(f"reply is neither ok nor an error: {reply!r}")
    message = str(reply.get("error", ""))
    if code == errno.ESRCH:
        raise DomainCrashed(message)
    raise HypervisorError(code, message)


def decode_reply(kind: int, body: bytes, decoder: Any) -> dict[str, Any]:
    """One reply frame as a dict, with the descriptors it announced (`nfds`) taken from `decoder`;
    the async and the blocking client read replies the same way."""
    if kind != wire.KIND_JSON:
        raise ProtocolError(f"unexpected frame kind {kind}")
    reply = wire.decode_json(body)
    nfds = reply.get("nfds", 0)
    reply["fds"] = decoder.take_fds(nfds if isinstance(nfds, int) else 0)
    return reply


def protocol_error(exc: WireError) -> ProtocolError:
    """A wire-protocol failure as the interface's ProtocolError (raise it `from exc`)."""
    return ProtocolError(str(exc))


def domain_info(reply: dict[str, Any]) -> DomainInfo:
    """A `domain_info` reply as the interface's `DomainInfo`."""
    return DomainInfo(
        domid=int(reply["domid"]),
        state=str(reply["state"]),
        crash_reason=reply.get("crash_reason"),
        shutdown_reason=reply.get("shutdown_reason"),
        lowmem=int(reply["lowmem"]),
        highmem=int(reply["highmem"]),
        mmio_hole=int(reply["mmio_hole"]),
        vcpus=int(reply["vcpus"]),
        ioreq_servers=tuple(reply.get("ioreq_servers", ())),
    )
