"""dm-acpi publication: the blobs in the reserved buffer, the keys hvmloader reads, and every
refusal of what hvmloader would drop (reference §2.5)."""

from __future__ import annotations

import pytest

from acpi.table import finish_table
from pmemd.daemon.dmacpi import (
    MAX_ENTRIES,
    TYPE_DEVICE_BODY,
    TYPE_TABLE,
    Blob,
    Buffer,
    DmAcpiError,
    Entry,
    dm_acpi_path,
    plan,
    publish,
    standard_blobs,
    unpublish,
)
from pmemd.daemon.tables import build_tables
from pmemd.xenstore import Access, AccessDeniedError, Perm
from tests.harness.host import GUEST, Host
from tests.harness.xenstore_tools import require_xenstore_tools, tool

ROOT = dm_acpi_path(GUEST)
TABLE = finish_table("NFIT", 1, bytes(40))
BODY = bytes([0x08]) + b"ABCD" + bytes([0x0A, 0x01])  # Name(ABCD, 1)
BUFFER = Buffer(0x3FF0000, 0x1000)


def refusal(blobs: list[Blob], buffer: Buffer = BUFFER, existing: list[str] | None = None) -> str:
    with pytest.raises(DmAcpiError) as info:
        plan(blobs, buffer, existing or ["address", "length"])
    return info.value.code


# -- layout and refusals (pure) ---------------------------------------------------------------


def test_blobs_are_laid_out_from_offset_zero_eight_byte_aligned() -> None:
    entries = plan([Blob("NFIT", TYPE_TABLE, TABLE), Blob("NVDR", TYPE_DEVICE_BODY, BODY)], BUFFER)
    assert entries == (Entry("NFIT", 0, 0, len(TABLE)), Entry("NVDR", 1, 80, len(BODY)))


def test_blobs_larger_than_the_buffer_are_refused() -> None:
    assert refusal([Blob("NFIT", TYPE_TABLE, TABLE)], Buffer(0x1000, len(TABLE) - 1)) == "dm-acpi-too-small"


def test_blobs_that_exactly_fill_the_buffer_are_accepted() -> None:
    assert plan([Blob("NFIT", TYPE_TABLE, TABLE)], Buffer(0x1000, len(TABLE)))


def test_a_buffer_at_or_above_4_gib_is_refused() -> None:
    assert refusal([Blob("NFIT", TYPE_TABLE, TABLE)], Buffer(1 << 32, 0x1000)) == "dm-acpi-above-4g"


def test_a_buffer_reaching_past_4_gib_is_refused() -> None:
    assert refusal([Blob("NFIT", TYPE_TABLE, TABLE)], Buffer((1 << 32) - 0x800, 0x1000)) == "dm-acpi-above-4g"


def test_more_than_16_directory_entries_are_refused() -> None:
    others = [f"X{i:03}" for i in range(MAX_ENTRIES - 2)]  # + address, length, NFIT = 17
    assert refusal([Blob("NFIT", TYPE_TABLE, TABLE)], existing=["address", "length", *others]) == "dm-acpi-too-many"


def test_exactly_16_directory_entries_are_accepted() -> None:
    others = [f"X{i:03}" for i in range(MAX_ENTRIES - 3)]
    assert plan([Blob("NFIT", TYPE_TABLE, TABLE)], BUFFER, ["address", "length", *others])


def test_our_own_stale_entries_do_not_count_twice() -> None:
    others = [f"X{i:03}" for i in range(MAX_ENTRIES - 3)]
    assert plan([Blob("NFIT", TYPE_TABLE, TABLE)], BUFFER, ["address", "length", "NFIT", *others])


@pytest.mark.parametrize("signature", ["RSD ", "FACS", "FACP", "DSDT", "APIC", "HPET", "WAET", "TCPA", "SRAT", "SLIT",
                                       "RSDT", "XSDT"])
def test_a_table_hvmloader_builds_itself_is_refused(signature: str) -> None:
    blob = Blob("TBL", TYPE_TABLE, finish_table(signature, 1, bytes(8)))
    assert refusal([blob]) == "dm-acpi-blacklisted"


def test_an_ssdt_is_allowed() -> None:
    assert plan([Blob("SSDT", TYPE_TABLE, finish_table("SSDT", 2, BODY))], BUFFER)


@pytest.mark.parametrize("name", ["PCI0", "MEM0", "BAT0", "BAT1", "AC__", "TPM_"])
def test_a_device_name_hvmloader_uses_is_refused(name: str) -> None:
    assert refusal([Blob(name, TYPE_DEVICE_BODY, BODY)]) == "dm-acpi-blacklisted"


@pytest.mark.parametrize("name", ["nvdr", "NV", "NVDRX", "1NVD"])
def test_a_type_1_name_that_is_not_an_aml_name_is_refused(name: str) -> None:
    assert refusal([Blob(name, TYPE_DEVICE_BODY, BODY)]) == "dm-acpi-bad-blob"


def test_a_table_whose_header_length_disagrees_with_the_blob_is_refused() -> None:
    assert refusal([Blob("NFIT", TYPE_TABLE, TABLE + bytes(4))]) == "dm-acpi-bad-blob"


@pytest.mark.parametrize("name", ["address", "length", "a/b", ""])
def test_entry_names_that_clash_with_keys_or_paths_are_refused(name: str) -> None:
    assert refusal([Blob(name, TYPE_TABLE, TABLE)]) == "dm-acpi-bad-blob"


def test_an_unknown_type_is_refused() -> None:
    assert refusal([Blob("NFIT", 2, TABLE)]) == "dm-acpi-bad-blob"


# -- publication against xenstored and guest RAM ------------------------------------------------


async def test_blobs_land_in_guest_ram_at_address_plus_offset(host: Host) -> None:
    cfg = host.config()
    buffer = await host.create_domain(cfg)
    tables = build_tables(cfg)
    publication = await publish(await host.client(), await host.hv_client(cfg), GUEST, standard_blobs(tables))
    ram = host.hv.domain(GUEST).ram
    nfit, nvdr, nvev = publication.entries
    assert ram.read(buffer.address + nfit.offset, nfit.length) == tables.nfit
    assert ram.read(buffer.address + nvdr.offset, nvdr.length) == tables.nvdr
    assert ram.read(buffer.address + nvev.offset, nvev.length) == tables.events


async def test_keys_are_decimal_and_guest_read_only(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    xs = await host.client()
    publication = await publish(xs, await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    nvdr = publication.entries[1]
    assert [await xs.read(f"{ROOT}/NVDR/{k}") for k in ("type", "offset", "length")] == [
        b"1", str(nvdr.offset).encode(), str(nvdr.length).encode()]
    for path in (f"{ROOT}/NVDR", f"{ROOT}/NVDR/type", f"{ROOT}/NFIT/length"):
        assert await xs.get_perms(path) == [Perm(0, Access.NONE), Perm(GUEST, Access.READ)]


async def test_the_guest_cannot_rewrite_a_published_offset(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    await publish(await host.client(), await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    guest = await host.client(host.guest_xs_sock)
    assert await guest.read(f"{ROOT}/NFIT/offset") == b"0"
    with pytest.raises(AccessDeniedError):
        await guest.write(f"{ROOT}/NFIT/offset", "64")
    with pytest.raises(AccessDeniedError):
        await guest.rm(f"{ROOT}/NFIT")


async def test_a_missing_buffer_is_refused_and_nothing_is_written(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    xs = await host.client()
    await xs.rm(f"{ROOT}/length")
    with pytest.raises(DmAcpiError) as info:
        await publish(xs, await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    assert info.value.code == "dm-acpi-missing"
    assert await xs.directory(ROOT) == ["address"]


@pytest.mark.parametrize("value", ["4096", "0x", "4k", " 0x1000 0"])
async def test_a_length_that_is_not_0x_hex_is_refused(host: Host, value: str) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    xs = await host.client()
    await xs.write(f"{ROOT}/length", value)
    with pytest.raises(DmAcpiError) as info:
        await publish(xs, await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    assert info.value.code == "dm-acpi-bad-key"


async def test_a_buffer_outside_guest_ram_is_refused(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg, Buffer(cfg.guest.lowmem, 0x1000))  # just above low RAM
    with pytest.raises(DmAcpiError) as info:
        await publish(await host.client(), await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    assert info.value.code == "dm-acpi-not-ram"


async def test_a_blacklisted_blob_is_refused_before_anything_is_published(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    xs = await host.client()
    blobs = [*standard_blobs(build_tables(cfg)), Blob("HPET", TYPE_TABLE, finish_table("HPET", 1, bytes(20)))]
    with pytest.raises(DmAcpiError) as info:
        await publish(xs, await host.hv_client(cfg), GUEST, blobs)
    assert info.value.code == "dm-acpi-blacklisted"
    assert sorted(await xs.directory(ROOT)) == ["address", "length"]


async def test_unpublish_removes_our_entries_and_keeps_the_buffer_keys(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    xs = await host.client()
    publication = await publish(xs, await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    await unpublish(xs, GUEST, publication)
    assert sorted(await xs.directory(ROOT)) == ["address", "length"]


async def test_xenstore_ls_shows_exactly_what_was_published(host: Host) -> None:
    require_xenstore_tools()
    cfg = host.config()
    buffer = await host.create_domain(cfg)
    publication = await publish(await host.client(), await host.hv_client(cfg), GUEST,
                                standard_blobs(build_tables(cfg)))
    result = await tool(host.xs_sock, "xenstore-ls", "-f", ROOT)
    expected = [f'{ROOT}/address = "{buffer.address:#x}"', f'{ROOT}/length = "{buffer.length:#x}"']
    for e in publication.entries:
        expected += [f'{ROOT}/{e.name} = ""', f'{ROOT}/{e.name}/type = "{e.type}"',
                     f'{ROOT}/{e.name}/offset = "{e.offset}"', f'{ROOT}/{e.name}/length = "{e.length}"']
    assert result.stdout.decode().splitlines() == expected


async def test_xenstore_write_as_the_guest_cannot_forge_an_entry(host: Host) -> None:
    require_xenstore_tools()
    cfg = host.config()
    await host.create_domain(cfg)
    await publish(await host.client(), await host.hv_client(cfg), GUEST, standard_blobs(build_tables(cfg)))
    result = await tool(host.guest_xs_sock, "xenstore-write", f"{ROOT}/NVDR/length", "9999", check=False)
    assert result.returncode != 0
    assert host.store.statistics().refusals.get("EACCES") == 1
    read = await tool(host.guest_xs_sock, "xenstore-read", f"{ROOT}/NVDR/length")
    assert read.stdout != b"9999\n"
