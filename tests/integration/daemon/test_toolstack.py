"""The toolstack's xenstore part of domain create/destroy: the home, the read-only hvmloader
directory, and the dm-acpi buffer reserved in low RAM (reference §2.5)."""

from __future__ import annotations

import pytest

from pmemd import config as configmod
from pmemd.daemon.dmacpi import PAGE_SIZE, dm_acpi_path, standard_blobs
from pmemd.daemon.state_key import guest_read_only
from pmemd.daemon.tables import build_tables
from pmemd.toolstack import ToolstackError, destroy_domain_keys, dm_acpi_size, reserve_dm_acpi
from tests.harness.host import GUEST, Host

ROOT = dm_acpi_path(GUEST)


def config(**raw: object) -> configmod.Config:
    base: dict = {"domid": GUEST, "guest": {"lowmem": "64M"},
                  "nvdimm": [{"backing": "/nonexistent", "size": "4M"}]}
    return configmod.from_mapping({**base, **raw})


def test_the_automatic_size_holds_the_tables_in_whole_pages() -> None:
    cfg = config()
    needed = sum(len(b.data) for b in standard_blobs(build_tables(cfg)))
    size = dm_acpi_size(cfg)
    assert size % PAGE_SIZE == 0 and needed <= size < needed + PAGE_SIZE + 16


def test_a_configured_size_wins() -> None:
    assert dm_acpi_size(config(xen={"dm_acpi_size": "64K"})) == 64 << 10


@pytest.mark.parametrize("size", ["1000", "0", -4096])
def test_a_size_that_is_not_whole_pages_is_a_config_error(size: object) -> None:
    with pytest.raises(configmod.ConfigError, match="xen.dm_acpi_size"):
        config(xen={"dm_acpi_size": size})


def test_the_buffer_sits_at_the_top_of_low_ram() -> None:
    buffer = reserve_dm_acpi(config(), 0x2000)
    assert (buffer.address, buffer.length) == ((64 << 20) - 0x2000, 0x2000)


def test_the_buffer_goes_below_a_dsm_page_in_guest_ram() -> None:
    cfg = config(dsm={"mode": "ram"})  # the page defaults to the last page of low RAM
    buffer = reserve_dm_acpi(cfg, 0x2000)
    assert buffer.address + buffer.length == cfg.dsm.page


def test_a_buffer_that_does_not_fit_low_ram_is_refused() -> None:
    with pytest.raises(ToolstackError):
        reserve_dm_acpi(config(), 64 << 20)


async def test_create_writes_hex_buffer_keys_in_a_guest_read_only_directory(host: Host) -> None:
    cfg = host.config()
    buffer = await host.create_domain(cfg)
    assert host.store.read(f"{ROOT}/address") == f"{buffer.address:#x}".encode()
    assert host.store.read(f"{ROOT}/length") == f"{buffer.length:#x}".encode()
    for path in (f"/local/domain/{GUEST}", f"/local/domain/{GUEST}/hvmloader", ROOT, f"{ROOT}/address"):
        assert host.store.get_perms(path) == guest_read_only(GUEST)
    assert host.store.is_domain_introduced(GUEST)


async def test_create_replaces_a_stale_home(host: Host) -> None:
    host.store.write(f"/local/domain/{GUEST}/left/over", "1")
    await host.create_domain(host.config())
    assert sorted(host.store.directory(f"/local/domain/{GUEST}")) == ["hvmloader"]


async def test_destroy_removes_the_home(host: Host) -> None:
    await host.create_domain(host.config())
    await destroy_domain_keys(await host.client(), GUEST)
    assert not host.store.exists(f"/local/domain/{GUEST}")
