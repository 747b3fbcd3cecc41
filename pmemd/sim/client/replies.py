"""Decoding the simulator's JSON replies into the interface's records."""

from __future__ import annotations

from typing import Any

from pmemd.xen.api import DomainInfo


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
