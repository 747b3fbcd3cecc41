"""The toolstack's xenstore part of domain create and destroy (what libxl does for pmemd).

At create, libxl (re)creates the domain's home ``/local/domain/<D>`` dom0-owned and guest
read-only, introduces the domain to xenstored, and -- in the vNVDIMM series (reference §2.5) --
reserves a buffer in guest RAM below 4 GiB for the device model's ACPI blobs, writing
``hvmloader/dm-acpi/{address,length}`` as "0x%x" in the read-only ``hvmloader`` directory.
At destroy it removes the home; xenstored itself fires ``@releaseDomain`` when the domain dies
(the simulator's hook in :mod:`pmemd.sim.hvmloader`).

The reservation is bookkeeping here (the simulator has no E820): the top of low RAM, below the
DSM page when that page is guest RAM too, sized by ``[xen] dm_acpi_size`` or, by default, to
the guest's NFIT and NVDR body rounded up to whole pages (xl's ``dm_acpi_pages``).
"""

from __future__ import annotations

import structlog
import trio

from pmemd.config import Config
from pmemd.daemon.dmacpi import BLOB_ALIGN, BUFFER_KEYS, PAGE_SIZE, Buffer, dm_acpi_path, standard_blobs
from pmemd.daemon.state_key import guest_read_only
from pmemd.daemon.tables import build_tables
from pmemd.xenstore import NoEntryError, Transaction, XenstoreClient, open_client
from pmemd.xenstore.wire import domain_path

log = structlog.get_logger("pmemd.toolstack")

LOW_RESERVED = 1 << 20  # below 1 MiB: real-mode memory, BIOS and hvmloader itself


class ToolstackError(Exception):
    """The domain's xenstore set-up cannot be done as configured."""


def dm_acpi_size(config: Config) -> int:
    """The buffer size: configured, or the guest's blobs rounded up to whole pages (min. one)."""
    if config.xen.dm_acpi_size is not None:
        return config.xen.dm_acpi_size
    needed = sum(-(-len(b.data) // BLOB_ALIGN) * BLOB_ALIGN for b in standard_blobs(build_tables(config)))
    return max(PAGE_SIZE, -(-needed // PAGE_SIZE) * PAGE_SIZE)


def reserve_dm_acpi(config: Config, size: int | None = None) -> Buffer:
    """Where the buffer goes: the top of low RAM, below the DSM page if that is RAM there."""
    size = dm_acpi_size(config) if size is None else size
    end = config.guest.lowmem
    dsm = config.dsm
    if dsm.mode == "ram" and dsm.page < end and end - size < dsm.page + PAGE_SIZE:
        end = dsm.page
    start = (end - size) // PAGE_SIZE * PAGE_SIZE
    if start < LOW_RESERVED:
        raise ToolstackError(
            f"no room for a {size}-byte dm-acpi buffer in low RAM ({config.guest.lowmem:#x} bytes)")
    return Buffer(start, size)


async def create_domain_keys(xs: XenstoreClient, config: Config, buffer: Buffer) -> None:
    """Fresh home, the read-only ``hvmloader`` directory with the buffer keys; introduce."""
    domid = config.domid
    home, root, perms = domain_path(domid), dm_acpi_path(domid), guest_read_only(domid)

    async def body(tx: Transaction) -> None:
        try:
            await tx.rm(home)  # libxl: a stale home from an earlier domain with this id goes
        except NoEntryError:
            pass
        for node in (home, f"{home}/hvmloader", root):
            await tx.mkdir(node)
            await tx.set_perms(node, perms)
        for key, value in zip(BUFFER_KEYS, (buffer.address, buffer.length)):
            await tx.write(f"{root}/{key}", f"{value:#x}")
            await tx.set_perms(f"{root}/{key}", perms)

    await xs.run_transaction(body)
    await xs.introduce(domid, 0, 0)
    log.info("dm-acpi buffer reserved", domid=domid, path=root, address=hex(buffer.address),
             length=hex(buffer.length))


async def destroy_domain_keys(xs: XenstoreClient, domid: int) -> None:
    """Remove the domain's home (and with it everything the device models wrote there)."""
    try:
        await xs.rm(domain_path(domid))
    except NoEntryError:
        pass


def create(config: Config, xenstore_socket: str) -> Buffer:
    """``pmemd domain create``'s xenstore part, from synchronous code."""
    buffer = reserve_dm_acpi(config)

    async def main() -> None:
        async with open_client(xenstore_socket) as xs:
            await create_domain_keys(xs, config, buffer)

    trio.run(main)
    return buffer


def destroy(domid: int, xenstore_socket: str) -> None:
    """``pmemd domain destroy``'s xenstore part, from synchronous code."""

    async def main() -> None:
        async with open_client(xenstore_socket) as xs:
            await destroy_domain_keys(xs, domid)

    trio.run(main)
