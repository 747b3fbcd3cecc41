"""Synchronous domain control (the toolstack's part) for `pmemd domain` and tests."""

from __future__ import annotations

import os
from typing import Any

from pmemd.sim.client import replies
from pmemd.sim.client.sync import SyncClient
from pmemd.xen.api import DomainInfo


class DomainControl:
    """create / unpause / pause / destroy / info / shutdown against the simulator."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._client = SyncClient(path)

    def create(self, domid: int, *, lowmem: int, highmem: int = 0, mmio_hole: int = 256 << 20, vcpus: int = 1) -> DomainInfo:
        """Create a paused domain with this memory map (a `GuestConfig`'s fields)."""
        r = self._client.request(
            "domain_create", domid=domid, lowmem=lowmem, highmem=highmem, mmio_hole=mmio_hole, vcpus=vcpus
        )
        return replies.domain_info(r)

    def create_from(self, domid: int, guest: Any) -> DomainInfo:
        """Create from a `pmemd.config.GuestConfig`."""
        return self.create(domid, lowmem=guest.lowmem, highmem=guest.highmem, mmio_hole=guest.mmio_hole, vcpus=guest.vcpus)

    def unpause(self, domid: int) -> None:
        self._client.request("domain_unpause", domid=domid)

    def pause(self, domid: int) -> None:
        self._client.request("domain_pause", domid=domid)

    def destroy(self, domid: int) -> None:
        self._client.request("domain_destroy", domid=domid)

    def shutdown(self, domid: int, reason: int) -> None:
        self._client.request("domain_shutdown", domid=domid, reason=reason)

    def info(self, domid: int) -> DomainInfo:
        return replies.domain_info(self._client.request("domain_info", domid=domid))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DomainControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
