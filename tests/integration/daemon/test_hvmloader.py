"""The simulated hvmloader applies hvmloader's dm-acpi loading rules (reference §2.5) to xenstore
and guest RAM, reading as the guest, and exposes the tables it built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from acpi.table import TableHeader, finish_table, parse_table
from pmemd.daemon.dmacpi import TYPE_DEVICE_BODY, TYPE_TABLE, Blob, Buffer, DmAcpiError, dm_acpi_path, plan
from pmemd.daemon.state_key import guest_read_only
from pmemd.daemon.tables import build_tables
from pmemd.sim.hv_domain import Domain, Layout
from pmemd.sim.hvmloader import BUILT_DEVICES, BUILT_SIGNATURES, Hvmloader, attach, load_dm_acpi, strtoll
from pmemd.sim.hypervisor import Hypervisor
from pmemd.xenstore import open_client
from pmemd.xenstored.store import RELEASE_DOMAIN, Store
from tests.harness.acpica import decompile
from tests.harness.host import GUEST, Host

ROOT = dm_acpi_path(GUEST)
ADDRESS = 0x3FF0000
LENGTH = 0x2000
BODY = bytes([0x08]) + b"ABCD" + bytes([0x0A, 0x01])  # Name(ABCD, 1)


def nfit(checksum_ok: bool = False) -> bytes:
    table = bytearray(finish_table("NFIT", 1, bytes(40)))
    if not checksum_ok:
        table[9] = 0  # the device model need not set it
    return bytes(table)


class Guest:
    """A domain and its xenstore keys, written as the toolstack and a device model would."""

    def __init__(self) -> None:
        self.hv = Hypervisor()
        self.dom: Domain = self.hv.create_domain(GUEST, Layout(64 << 20, 0, 256 << 20, 1))
        self.store = Store()
        self.store.mkdir(ROOT)
        self.store.set_perms(f"/local/domain/{GUEST}", guest_read_only(GUEST))
        self.store.set_perms(ROOT, guest_read_only(GUEST))
        self.store.write(f"{ROOT}/address", f"{ADDRESS:#x}")
        self.store.write(f"{ROOT}/length", f"{LENGTH:#x}")
        self.offset = 0

    def add(self, name: str, kind: int, blob: bytes, **keys: str) -> None:
        self.dom.ram.write(ADDRESS + self.offset, blob)
        values = {"type": str(kind), "offset": str(self.offset), "length": str(len(blob)), **keys}
        for key, value in values.items():
            self.store.write(f"{ROOT}/{name}/{key}", value)
        self.offset += len(blob) + 8

    def load(self, **options: int):  # type: ignore[no-untyped-def]
        return load_dm_acpi(self.store, GUEST, self.dom.ram.read, **options)


def skipped(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s.entry: s.reason for s in result.skipped}


async def test_a_type_0_table_is_copied_with_its_checksum_recomputed() -> None:
    g = Guest()
    g.add("NFIT", 0, nfit())
    (table,) = g.load().tables
    parse_table(table.data)
    assert (table.entry, table.signature, table.data[10:]) == ("NFIT", "NFIT", nfit()[10:])


async def test_a_type_0_table_is_copied_to_its_header_length_not_the_blob_length() -> None:
    g = Guest()
    g.add("NFIT", 0, nfit() + b"trailing")
    (table,) = g.load().tables
    assert len(table.data) == len(nfit())


async def test_a_type_1_body_becomes_an_ssdt_revision_2_from_xen(tmp_path: Path) -> None:
    g = Guest()
    g.add("ABCD", 1, BODY)
    (table,) = g.load().tables
    header = TableHeader.parse(table.data)
    assert (header.signature, header.revision, header.oem_id, header.oem_table_id, header.creator_id) == (
        "SSDT", 2, "Xen", "HVM", "HVML")
    dsl = decompile(table.data, tmp_path)
    assert "Scope (\\_SB)" in dsl and "Device (ABCD)" in dsl and "Name (ABCD, 0x01)" in dsl


async def test_the_buffer_keys_are_listed_but_not_loaded_or_reported() -> None:
    g = Guest()
    g.add("NFIT", 0, nfit())
    result = g.load()
    assert ([t.entry for t in result.tables], result.skipped) == (["NFIT"], [])


async def test_an_entry_without_a_type_is_skipped() -> None:
    g = Guest()
    g.store.write(f"{ROOT}/JUNK/offset", "0")
    assert skipped(g.load()) == {"JUNK": "no type"}


async def test_nothing_is_loaded_without_both_address_and_length() -> None:
    g = Guest()
    g.add("NFIT", 0, nfit())
    g.store.rm(f"{ROOT}/length")
    result = g.load()
    assert (result.has_dm_acpi, result.tables) == (False, [])


async def test_more_than_16_entries_make_hvmloader_give_up_on_all() -> None:
    g = Guest()
    for i in range(15):  # + address + length = 17
        g.add(f"T{i:03}", 0, nfit())
    result = g.load()
    assert result.tables == [] and "17 dm-acpi entries" in (result.gave_up or "")


async def test_16_entries_are_all_loaded() -> None:
    g = Guest()
    for i in range(14):
        g.add(f"T{i:03}", 0, nfit())
    assert len(g.load().tables) == 14


async def test_tables_hvmloader_built_first_reduce_the_entry_limit() -> None:
    g = Guest()
    for i in range(3):
        g.add(f"T{i:03}", 0, nfit())
    assert g.load(secondary_tables_built=12).gave_up is not None
    assert len(g.load(secondary_tables_built=11).tables) == 3


async def test_a_blacklisted_signature_is_skipped() -> None:
    g = Guest()
    g.add("HPET", 0, finish_table("HPET", 1, bytes(20)))
    g.add("NFIT", 0, nfit())
    result = g.load()
    assert [t.entry for t in result.tables] == ["NFIT"]
    assert skipped(result) == {"HPET": "signature HPET is on the blacklist"}


@pytest.mark.parametrize("header_length", [0, 200])
async def test_a_header_length_of_zero_or_beyond_the_blob_is_skipped(header_length: int) -> None:
    g = Guest()
    table = bytearray(nfit())
    table[4:8] = header_length.to_bytes(4, "little")
    g.add("NFIT", 0, bytes(table))
    assert "header length" in skipped(g.load())["NFIT"]


@pytest.mark.parametrize("name", ["PCI0", "MEM0", "TPM"])
async def test_a_device_name_collision_is_skipped(name: str) -> None:
    g = Guest()
    g.add(name, 1, BODY)
    assert "collides" in skipped(g.load())[name]


async def test_two_bodies_for_one_device_name_load_once() -> None:
    g = Guest()
    g.add("NVDR", 1, BODY)
    g.add("NVDRX", 1, BODY)  # hvmloader takes the first 4 characters
    result = g.load()
    assert ([t.entry for t in result.tables], list(skipped(result))) == (["NVDR"], ["NVDRX"])


async def test_an_unknown_type_is_skipped() -> None:
    g = Guest()
    g.add("NFIT", 2, nfit())
    assert skipped(g.load()) == {"NFIT": "unknown type 2"}


async def test_a_blob_outside_the_buffer_is_skipped() -> None:
    g = Guest()
    g.add("NFIT", 0, nfit(), offset=str(LENGTH - 8))
    assert "outside" in skipped(g.load())["NFIT"]


async def test_keys_the_guest_cannot_read_are_not_loaded() -> None:
    g = Guest()
    g.add("NFIT", 0, nfit())
    g.store.set_perms(ROOT, guest_read_only(GUEST)[:1])  # dom0 only
    assert g.load().tables == []


@pytest.mark.parametrize(("text", "value"), [("0x1000", 4096), ("4096", 4096), ("010", 8), ("0", 0),
                                             ("0x", None), ("12ab", None), ("", None)])
def test_numbers_parse_like_strtoll_base_0(text: str, value: int | None) -> None:
    assert strtoll(text) == value


async def test_hvmloader_runs_at_the_first_unpause_only(tmp_path: Path) -> None:
    g = Guest()
    loader = attach(g.hv, g.store, tmp_path)
    g.add("NFIT", 0, nfit())
    g.hv.unpause_domain(g.dom)
    g.store.write(f"{ROOT}/NFIT/type", "7")
    g.hv.domain(GUEST).pause()
    g.hv.unpause_domain(g.dom)
    assert [t.entry for t in loader.results[GUEST].tables] == ["NFIT"]


async def test_the_loaded_tables_are_written_with_a_summary(tmp_path: Path) -> None:
    g = Guest()
    g.add("NFIT", 0, nfit())
    g.add("PCI0", 1, BODY)
    Hvmloader(g.store, tmp_path).boot(g.dom)
    out = tmp_path / f"dom{GUEST}"
    summary = json.loads((out / "hvmloader.json").read_text())
    assert [t["file"] for t in summary["loaded"]] == ["NFIT.dat"]
    assert [s["entry"] for s in summary["skipped"]] == ["PCI0"]
    parse_table((out / "NFIT.dat").read_bytes())


async def test_destroying_a_domain_fires_release_domain(host: Host) -> None:
    cfg = host.config()
    await host.create_domain(cfg)
    async with open_client(host.xs_sock) as xs, xs.watching(RELEASE_DOMAIN) as events:
        await events.receive()  # the registration event
        host.hv.destroy_domain(host.hv.domain(GUEST))
        with trio.fail_after(5):
            assert (await events.receive()).path == RELEASE_DOMAIN


async def test_the_daemon_s_tables_load_and_decode_cleanly(host: Host, tmp_path: Path) -> None:
    cfg = host.config(nvdimms=3)
    await host.create_domain(cfg)
    daemon = await host.start_daemon(cfg)
    host.unpause()
    result = host.hvmloader.results[GUEST]
    assert ([t.entry for t in result.tables], result.skipped) == (["NFIT", "NVDR", "NVEV"], [])
    tables = build_tables(cfg)
    assert result.tables[0].data == tables.nfit
    dsl = decompile(result.tables[1].data, tmp_path, "ssdt")
    assert [f"Device (NV{slot:02X})" in dsl for slot in range(3)] == [True] * 3
    assert "Method (_E04, 0, NotSerialized)" in decompile(result.tables[2].data, tmp_path, "nvev")
    await daemon.stop()


# -- the daemon's rules against hvmloader's (each side keeps its own copy) ------------------------

@pytest.mark.parametrize("signature", sorted(BUILT_SIGNATURES))
async def test_the_daemon_refuses_every_table_signature_hvmloader_skips(signature: str) -> None:
    table = finish_table(signature, 1, bytes(8))
    g = Guest()
    g.add("TBL", 0, table)
    assert "blacklist" in skipped(g.load())["TBL"]
    with pytest.raises(DmAcpiError) as refused:
        plan([Blob("TBL", TYPE_TABLE, table)], Buffer(ADDRESS, LENGTH), ["address", "length"])
    assert refused.value.code == "dm-acpi-blacklisted"


@pytest.mark.parametrize("device", sorted(BUILT_DEVICES))
async def test_the_daemon_refuses_every_device_name_hvmloader_skips(device: str) -> None:
    g = Guest()
    g.add(device, 1, BODY)
    assert "collides" in skipped(g.load())[device]
    with pytest.raises(DmAcpiError) as refused:
        plan([Blob(device, TYPE_DEVICE_BODY, BODY)], Buffer(ADDRESS, LENGTH), ["address", "length"])
    assert refused.value.code == "dm-acpi-blacklisted"
