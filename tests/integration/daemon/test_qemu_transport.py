"""The QEMU front end: the daemon in `transport = "qemu"` mode, driven the way the guest's AML does.

A real guest-RAM file and a real Unix socket stand in for QEMU: the test writes a request
into the page through its own mapping of the file, stores a ticket, sends one doorbell
byte, and reads the reply where the AML would. Also: the per-DIMM `_DSM` family (function 0
per family, labels for `_LSx` whatever the family) and the config rules of both choices.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest
import trio
import trio.testing

from acpi.doorbell import DONE_OFFSET, TICKET_OFFSET
from acpi.dsm_buffer import PAGE_SIZE
from pmemd.config import Config, ConfigError, from_mapping
from pmemd.daemon.serve import serve_guest
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.label_store import MemoryLabelStore
from pmemd.dsm.page import decode_reply, encode_request

MiB = 1 << 20
PAGE = 0x100000
LABELS = 128 * 1024


def qemu_config(tmp_path: Path, **dimm: object) -> Config:
    backing = tmp_path / "nv0.img"
    backing.write_bytes(b"")
    with backing.open("r+b") as f:
        f.truncate(2 * MiB + LABELS)
    return from_mapping({
        "domid": 1,
        "guest": {"lowmem": "16M"},
        "dsm": {"transport": "qemu", "page": PAGE, "doorbell": "bell.sock", "ram": "ram.img"},
        "nvdimm": [{"backing": "nv0.img", "size": 2 * MiB + LABELS, "label_size": LABELS, **dimm}],
    }, base_dir=tmp_path)


class FakeQemu:
    """What QEMU and the guest AML do to the page, the completion words and the doorbell."""

    def __init__(self, ram: Path) -> None:
        with ram.open("r+b") as f:
            self.map = mmap.mmap(f.fileno(), 0)
        self.ticket = 0
        self.stream: trio.SocketStream | None = None

    async def connect(self, doorbell: Path) -> None:
        self.stream = await trio.open_unix_socket(str(doorbell))

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        self.map.close()

    def word(self, offset: int) -> int:
        return int.from_bytes(self.map[PAGE + offset : PAGE + offset + 4], "little")

    async def call(self, handle: int, revision: int, function: int, data: bytes = b"", *, rings: int = 1) -> bytes:
        assert self.stream is not None
        self.map[PAGE : PAGE + PAGE_SIZE] = encode_request(handle, revision, function, data)
        self.ticket += 1
        self.map[PAGE + TICKET_OFFSET : PAGE + TICKET_OFFSET + 4] = self.ticket.to_bytes(4, "little")
        await self.stream.send_all(b"\x01" * rings)
        await trio.testing.wait_all_tasks_blocked()
        assert self.word(DONE_OFFSET) == self.ticket, "the call did not complete"
        length = self.word(0)
        return decode_reply(bytes(self.map[PAGE : PAGE + length]))


@pytest.fixture
async def qemu(nursery: trio.Nursery, tmp_path: Path):
    cfg = qemu_config(tmp_path)
    ram = tmp_path / "ram.img"
    with ram.open("wb") as f:
        f.truncate(16 * MiB)
    guest = await nursery.start(serve_guest, cfg, "")
    fake = FakeQemu(ram)
    await fake.connect(cfg.dsm.doorbell)
    yield fake, guest
    await fake.aclose()
    nursery.cancel_scope.cancel()


async def test_doorbell_ring_answers_the_page_and_returns_the_ticket(qemu) -> None:
    fake, guest = qemu
    reply = await fake.call(1, 1, 4)  # label area size
    assert int.from_bytes(reply[:4], "little") == 0
    assert int.from_bytes(reply[4:8], "little") == LABELS
    assert guest.doorbell.statistics().calls == 1


async def test_label_write_through_the_doorbell_reaches_the_backing_file(qemu, tmp_path: Path) -> None:
    fake, _ = qemu
    payload = bytes(range(16))
    reply = await fake.call(1, 1, 6, (256).to_bytes(4, "little") + (16).to_bytes(4, "little") + payload)
    assert reply == bytes(4)
    backing = (tmp_path / "nv0.img").read_bytes()
    assert backing[2 * MiB + 256 : 2 * MiB + 272] == payload


async def test_repeated_doorbell_bytes_serve_a_call_once(qemu) -> None:
    fake, guest = qemu
    await fake.call(0, 1, 0, rings=3)
    stats = guest.doorbell.statistics()
    assert (stats.calls, stats.stale_rings) == (1, 2)


async def test_unknown_handle_through_the_doorbell_is_status_2(qemu) -> None:
    fake, _ = qemu
    assert await fake.call(9, 1, 1) == (2).to_bytes(4, "little")


async def test_doorbell_socket_is_removed_when_the_daemon_stops(tmp_path: Path) -> None:
    cfg = qemu_config(tmp_path)
    with (tmp_path / "ram.img").open("wb") as f:
        f.truncate(16 * MiB)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_guest, cfg, "")
        assert cfg.dsm.doorbell.is_socket()
        nursery.cancel_scope.cancel()
    assert not cfg.dsm.doorbell.exists()


async def test_ram_file_too_small_for_the_page_fails_setup(tmp_path: Path) -> None:
    cfg = qemu_config(tmp_path)
    (tmp_path / "ram.img").write_bytes(bytes(PAGE))
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="does not reach the DSM page"),
                            flatten_subgroups=True):
        await serve_guest(cfg, "")


# -- DIMM families ---------------------------------------------------------------------


def family_dispatcher(tmp_path: Path, family: str):
    return build_dispatcher(qemu_config(tmp_path, family=family), {0: MemoryLabelStore(LABELS)}).dispatcher


@pytest.mark.parametrize(("family", "health"), [("hyperv", {1, 2}), ("msft", {11}), ("hpe1", {1})])
def test_non_intel_dimm_function_0_offers_its_health_and_no_label_functions(
    tmp_path: Path, family: str, health: set[int]
) -> None:
    dispatcher = family_dispatcher(tmp_path, family)
    assert (dispatcher.mask(1, 1), dispatcher.mask(1, 2)) == (1 | sum(1 << f for f in health), 0)


def test_non_intel_dimm_still_serves_label_functions_for_lsx(tmp_path: Path) -> None:
    dispatcher = family_dispatcher(tmp_path, "hyperv")
    reply = decode_reply(dispatcher.dispatch(encode_request(1, 1, 4)))
    assert reply[:8] == bytes(4) + LABELS.to_bytes(4, "little")


def test_non_intel_dimm_refuses_intel_smart(tmp_path: Path) -> None:
    dispatcher = family_dispatcher(tmp_path, "msft")
    assert decode_reply(dispatcher.dispatch(encode_request(1, 1, 1))) == (1).to_bytes(4, "little")


def test_intel_dimm_mask_still_lists_label_functions(tmp_path: Path) -> None:
    assert family_dispatcher(tmp_path, "intel").mask(1, 1) & 0x70 == 0x70


# -- config rules ----------------------------------------------------------------------


def raw(**dsm: object) -> dict:
    return {"domid": 1, "guest": {"lowmem": "512M"}, "dsm": dsm}


@pytest.mark.parametrize(("dsm", "field", "phrase"), [
    ({"transport": "tcp"}, "dsm.transport", "\"xen\" or \"qemu\""),
    ({"transport": "qemu", "ram": "r"}, "dsm.doorbell", "is required"),
    ({"transport": "qemu", "doorbell": "d"}, "dsm.ram", "is required"),
    ({"transport": "qemu", "doorbell": "d", "ram": "r", "mode": "mmio"}, "dsm.mode", "needs mode \"ram\""),
    ({"transport": "qemu", "doorbell": "d", "ram": "r", "page": 0x1FFFF000}, "dsm.page", "completion page"),
    ({"transport": "qemu", "doorbell": "d", "ram": "r", "timeout_ms": 0}, "dsm.timeout_ms", "between"),
    ({"mode": "ram", "doorbell": "d"}, "dsm.doorbell", "only to transport"),
])
def test_qemu_transport_rules_name_the_field(dsm: dict, field: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping(raw(**dsm))
    assert e.value.field == field and phrase in e.value.rule


def test_qemu_transport_defaults_page_to_half_of_low_ram(tmp_path: Path) -> None:
    cfg = from_mapping(raw(transport="qemu", doorbell="d", ram="r"), base_dir=tmp_path)
    assert (cfg.dsm.mode, cfg.dsm.page, cfg.dsm.doorbell, cfg.dsm.timeout_ms) == ("ram", 256 * MiB, tmp_path / "d", 4000)


def test_unknown_dimm_family_is_rejected_naming_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping({"domid": 1, "nvdimm": [{"backing": "b", "size": "2M", "family": "hpe2"}]})
    assert e.value.field == "nvdimm[0].family" and "intel, hpe1, msft, hyperv" in e.value.rule
