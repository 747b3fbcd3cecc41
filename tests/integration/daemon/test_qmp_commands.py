"""QMP commands and events through the real `qemu.qmp` client, against the daemon on the simulator."""

from __future__ import annotations

import os
import stat
import struct
from functools import partial

import pytest
import trio
from qemu.qmp import ExecuteError

from pmemd import config as configmod
from pmemd.daemon.guest import RunOptions
from pmemd.daemon.serve import serve_guest
from pmemd.dsm.firmware_image import build_image
from pmemd.qmp.registry import COMMANDS
from pmemd.sim.guest_driver import Guest as GuestDriver
from tests.harness.config import MiB, write_config
from tests.harness.qmp import connect

DOMID = 12


@pytest.fixture
async def guest_config(sim, tmp_path) -> configmod.Config:
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB, unpause=False)
    return configmod.load(write_config(tmp_path, sim.path, domid=DOMID, nvdimms=2))


@pytest.fixture
async def guest(sim, guest_config, nursery):
    return await nursery.start(serve_guest, guest_config, str(sim.path))


@pytest.fixture
async def qmp(guest):
    async with connect(guest.config.qmp_socket) as client:
        yield client


def server_enabled(sim) -> bool:
    (server,) = sim.hv.domains[DOMID].servers.values()
    return server.enabled


async def refused(qmp, command, arguments=None) -> ExecuteError:
    with pytest.raises(ExecuteError) as excinfo:
        await qmp.execute(command, arguments)
    return excinfo.value


async def test_the_socket_is_at_the_configured_path_and_mode_0600(guest, qmp):
    mode = os.stat(guest.config.qmp_socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_the_greeting_names_the_qemu_dialect_and_the_real_package(qmp):
    version = qmp.greeting["QMP"]["version"]
    assert version == await qmp.execute("query-version")
    assert version["qemu"]["major"] >= 2 and version["package"].startswith("pmemd")


async def test_query_status_reads_running_while_the_guest_is_served(qmp):
    assert await qmp.execute("query-status") == {"running": True, "status": "running"}


async def test_query_commands_lists_exactly_the_commands_served(qmp):
    names = {c["name"] for c in await qmp.execute("query-commands")}
    assert names == {"qmp_capabilities", *COMMANDS}


async def test_an_unknown_command_is_command_not_found_and_the_session_goes_on(qmp):
    error = await refused(qmp, "no-such-command")
    assert error.error_class == "CommandNotFound"
    assert await qmp.execute("query-status")


@pytest.mark.parametrize(
    "command, arguments, message",
    [
        ("xen-save-devices-state", {}, "Parameter 'filename' is missing"),
        ("query-status", {"verbose": True}, "Parameter 'verbose' is unexpected"),
        ("pmemd-inject-poison", {"address": "0x1000", "length": 1}, "Invalid parameter type for 'address'"),
        ("pmemd-query-health", {"slot": -1}, "Parameter 'slot' expects a value between"),
        ("pmemd-set-health", {"slot": 0, "health": ["on-fire"]}, "unknown conditions"),
    ],
)
async def test_bad_arguments_are_generic_errors_naming_the_parameter(qmp, command, arguments, message):
    error = await refused(qmp, command, arguments)
    assert error.error_class == "GenericError"
    assert message in error.error.error.desc


async def test_stop_disables_the_ioreq_server_and_emits_stop(sim, qmp):
    await qmp.execute("stop")
    assert (await qmp.event("STOP"))["event"] == "STOP"
    assert await qmp.execute("query-status") == {"running": False, "status": "paused"}
    assert not server_enabled(sim)


async def test_cont_enables_the_ioreq_server_again_and_emits_resume(sim, qmp):
    await qmp.execute("stop")
    await qmp.execute("cont")
    await qmp.event("RESUME")
    assert await qmp.execute("query-status") == {"running": True, "status": "running"}
    assert server_enabled(sim)


async def test_events_reach_every_connected_client(guest, qmp):
    async with connect(guest.config.qmp_socket) as other:
        await qmp.execute("stop")
        assert (await other.event("STOP"))["event"] == "STOP"
        assert (await qmp.event("STOP"))["event"] == "STOP"


async def test_query_memory_devices_has_qemus_nvdimm_shape(guest, qmp):
    devices = await qmp.execute("query-memory-devices")
    expected = [
        {"type": "nvdimm", "data": {"id": f"nvdimm{d.slot}", "addr": d.address, "size": d.pmem_size, "slot": d.slot,
                                    "node": d.node, "memdev": f"/objects/memnvdimm{d.slot}",
                                    "hotplugged": False, "hotpluggable": False}}
        for d in guest.config.nvdimms
    ]
    assert devices == expected


async def test_quit_replies_sends_shutdown_and_the_daemon_tears_down_and_returns(sim, guest_config):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:  # ends only once serve_guest has returned
            await nursery.start(serve_guest, guest_config, str(sim.path))
            async with connect(guest_config.qmp_socket) as qmp:
                assert await qmp.execute("quit") == {}
                assert (await qmp.event("SHUTDOWN"))["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert sim.hv.domains[DOMID].servers == {}
    assert not guest_config.qmp_socket.exists()


async def test_loading_device_state_while_running_is_refused(qmp, tmp_path):
    error = await refused(qmp, "xen-load-devices-state", {"filename": str(tmp_path / "none")})
    assert "while vm is running" in error.error.error.desc


async def test_injected_poison_is_listed_raises_an_event_and_clears(guest, qmp):
    base = guest.config.nvdimms[1].address
    await qmp.execute("pmemd-inject-poison", {"address": base + 0x2000, "length": 0x200, "notify": True})
    assert (await qmp.event("PMEMD_MEDIA_ERRORS"))["data"] == {"notify": 0x81}
    poison = await qmp.execute("pmemd-query-poison")
    assert poison["injected"] == poison["poison"] == [{"address": base + 0x2000, "length": 0x200}]
    await qmp.execute("pmemd-clear-poison", {"address": base, "length": 0x10000})
    assert (await qmp.execute("pmemd-query-poison"))["poison-count"] == 0


async def test_poison_outside_guest_pmem_is_refused(qmp):
    error = await refused(qmp, "pmemd-inject-poison", {"address": 0x1000, "length": 0x200})
    assert "not inside one persistent-memory SPA range" in error.error.error.desc


async def test_health_set_by_the_operator_is_what_query_health_reports(qmp):
    await qmp.execute("pmemd-set-health", {"slot": 1, "health": ["critical"], "spares": 4,
                                           "media-temperature": 51.5, "dirty-shutdown": True})
    (h,) = await qmp.execute("pmemd-query-health", {"slot": 1})
    assert h["health"] == ["critical"] and h["spares"] == 4 and h["media-temperature"] == 51.5
    assert h["alarms"] == ["spares", "media-temperature"]
    assert (h["shutdown-state"], h["dirty-shutdown-count"]) == ("dirty", 1)
    assert (await qmp.event("PMEMD_HEALTH_CHANGED"))["data"] == {"slot": 1, "id": "nvdimm1", "notify": 0x81}


async def test_a_slot_the_guest_lacks_is_device_not_found(qmp):
    error = await refused(qmp, "pmemd-query-health", {"slot": 9})
    assert error.error_class == "DeviceNotFound"


async def test_a_scrub_started_by_the_operator_completes_with_an_event_and_its_records(guest, qmp):
    base = guest.config.nvdimms[0].address
    await qmp.execute("pmemd-inject-poison", {"address": base + 0x10000, "length": 0x1000})
    started = await qmp.execute("pmemd-start-scrub", {"slot": 0})
    done = await qmp.event("PMEMD_SCRUB_COMPLETED")
    assert done["data"] == {"seq": started["seq"], "address": base, "length": guest.config.nvdimms[0].pmem_size,
                            "records": 1, "overflowed": False}
    scrub = await qmp.execute("pmemd-query-scrub")
    assert scrub["state"] == "complete"
    assert scrub["records"] == [{"address": base + 0x10000, "length": 0x1000}]


# -- label area usage: the index block as Linux writes it (drivers/nvdimm/label.c) ----------

def linux_fletcher64(data: bytes) -> int:
    lo = hi = 0
    for (word,) in struct.iter_unpack("<I", data):
        lo = (lo + word) & 0xFFFFFFFF
        hi = (hi + lo) & 0xFFFFFFFFFFFFFFFF
    return (hi << 32 | lo) & 0xFFFFFFFFFFFFFFFF


def linux_index_blocks(nslot: int, in_use: set[int], seq: int = 1) -> bytes:
    """Two v1.2 index blocks (256-byte labels) with the same free bitmap."""
    size = -(-(72 + -(-nslot // 8)) // 256) * 256
    free = sum(1 << i for i in range(nslot) if i not in in_use)
    out = b""
    for i in (0, 1):
        block = bytearray(size)
        block[0:16] = b"NAMESPACE_INDEX\x00"
        struct.pack_into("<B I QQQQ I HH", block, 19, 1, seq, i * size, size, (1 - i) * size, 2 * size, nslot, 1, 2)
        block[72 : 72 + -(-nslot // 8)] = free.to_bytes(-(-nslot // 8), "little")
        struct.pack_into("<Q", block, 64, linux_fletcher64(bytes(block)))
        out += bytes(block)
    return out


async def test_label_usage_counts_the_slots_the_guest_index_marks_in_use(guest, qmp):
    store = guest.labels[0]
    nslot = 1000
    store.write(0, linux_index_blocks(nslot, {0, 1, 7}))
    (usage,) = await qmp.execute("pmemd-query-labels", {"slot": 0})
    assert usage["label-area-size"] == 2 * MiB
    assert usage["index"] == {"valid": True, "version": "1.2", "label-size": 256, "seq": 1,
                              "slots": nslot, "in-use": 3, "free": nslot - 3}


async def test_an_unformatted_or_corrupt_label_area_reads_as_no_valid_index(guest, qmp):
    (blank,) = await qmp.execute("pmemd-query-labels", {"slot": 1})
    assert blank["index"]["valid"] is False
    store = guest.labels[1]
    blocks = bytearray(linux_index_blocks(100, {3}))
    blocks[80] ^= 0xFF  # bitmap byte of block 0 and of block 1: both checksums fail
    blocks[len(blocks) // 2 + 80] ^= 0xFF
    store.write(0, bytes(blocks))
    (corrupt,) = await qmp.execute("pmemd-query-labels", {"slot": 1})
    assert corrupt["index"]["valid"] is False and "checksum" in corrupt["index"]["reason"]


async def test_query_firmware_reports_what_the_guest_staged_and_armed(guest, qmp):
    fw = guest.handlers.dimms[1].firmware
    _, context = fw.start()
    image = build_image(0x200000001, b"fw")
    assert fw.send(context, 0, image) == 0 and fw.finish(context, 0) == 0 and fw.query(context) == (0, 0x200000001)
    fw.set_armed(True)
    reports = await qmp.execute("pmemd-query-firmware")
    assert reports == [
        {"slot": 0, "running-version": "0x100000000", "staged-version": None, "armed": False,
         "last-activation": "none", "update": "idle"},
        {"slot": 1, "running-version": "0x100000000", "staged-version": "0x200000001", "armed": True,
         "last-activation": "none", "update": "idle"},
    ]
    assert (await refused(qmp, "pmemd-query-firmware", {"slot": 7})).error_class == "DeviceNotFound"


async def test_a_daemon_started_paused_reads_prelaunch_and_serves_the_guest_only_after_cont(sim, guest_config, nursery):
    """`pmemd run --paused` is QEMU's -S, as libxl's fd-passed QMP path starts it."""
    await nursery.start(partial(serve_guest, guest_config, str(sim.path), options=RunOptions(paused=True)))
    async with connect(guest_config.qmp_socket) as qmp:
        assert await qmp.execute("query-status") == {"running": False, "status": "prelaunch"}
        assert not server_enabled(sim)
        await qmp.execute("cont")
        await qmp.event("RESUME")
        assert await qmp.execute("query-status") == {"running": True, "status": "running"}
        assert server_enabled(sim)


async def test_the_guest_has_one_scrubber_whose_completions_reach_qmp(guest, qmp):
    root = guest.handlers.root
    assert len(root.media.scrub_listeners) == 1  # dsm-handlers' scrubber, shared with QMP
    started = await qmp.execute("pmemd-start-scrub", {"slot": 0})
    assert (await qmp.event("PMEMD_SCRUB_COMPLETED"))["data"]["seq"] == started["seq"]


@pytest.mark.parametrize("command, arguments, notify", [
    ("pmemd-set-health", {"slot": 1, "health": ["critical"]}, {"target": "NV01", "value": 0x81}),
    ("pmemd-inject-poison", {"address": "nvdimm0", "length": 0x200, "notify": True}, {"target": "NVDR", "value": 0x81}),
])
async def test_a_notify_queued_by_a_command_reaches_the_guest_before_its_next_call(
        sim, tmp_path, nursery, command, arguments, notify):
    domid = DOMID + 1
    await sim.create_domain(domid, vcpus=2, lowmem=64 * MiB)
    config = configmod.load(write_config(tmp_path, sim.path, domid=domid, nvdimms=2))
    await nursery.start(serve_guest, config, str(sim.path))
    if arguments.get("address") == "nvdimm0":
        arguments = {**arguments, "address": config.nvdimms[0].address}
    guest_side = GuestDriver(config, str(sim.path))
    try:
        async with connect(config.qmp_socket) as qmp:
            await qmp.execute(command, arguments)
        seen = await trio.to_thread.run_sync(lambda: guest_side.run_line('{"events": true}'))
    finally:
        guest_side.close()
    assert seen == {"gpes": [4], "notify": [notify]}
