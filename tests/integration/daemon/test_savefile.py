"""The device-state save file: round trips, older versions read, and every kind of bad file refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import trio
from qemu.qmp import ExecuteError

from acpi.dsm_buffer import ROOT_HANDLE
from pmemd import config as configmod
from pmemd.daemon import savefile
from pmemd.daemon.savefile import SaveFileError
from pmemd.daemon.serve import serve_guest
from pmemd.dsm.build import build_dispatcher
from pmemd.dsm.devices import slot_to_handle
from pmemd.dsm.inject import inject_error
from pmemd.dsm.media import MediaErrors
from pmemd.dsm.root_layouts import ARS_TYPE_PERSISTENT
from tests.harness.config import MiB, write_config
from tests.harness.guest_script import run_script_async
from tests.harness.qmp import connect


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def devices(cfg: configmod.Config, clock: Clock | None = None):
    dispatcher = build_dispatcher(cfg, {}, media=MediaErrors.create(now=clock or Clock())).dispatcher
    root = dispatcher.target(ROOT_HANDLE).device
    dimms = [dispatcher.target(slot_to_handle(d.slot)).device for d in cfg.nvdimms]
    return root, dimms


@pytest.fixture
def cfg(tmp_path) -> configmod.Config:
    return configmod.load(write_config(tmp_path, tmp_path / "hv.sock", domid=5, nvdimms=2))


@pytest.fixture
def state(cfg):
    """Devices with poison, an injected error, changed health and a settled scrub; and their file."""
    clock = Clock()
    root, dimms = devices(cfg, clock)
    base = cfg.nvdimms[0].address
    root.media.poison.add(base + 0x1000, 0x100)
    inject_error(root, base + 0x8000, 0x200)
    dimms[1].health.spares = 7
    dimms[1].health.thresholds.spares = 9
    dimms[1].health.dirty_shutdown()
    root.media.ars.start(root.media.poison, base, cfg.nvdimms[0].pmem_size, ARS_TYPE_PERSISTENT, False, clock())
    clock.t += 60
    root.media.ars.settle(root.media.poison, clock())
    return root, dimms, savefile.capture(cfg, root, dimms)


def test_a_restored_state_equals_the_saved_one(cfg, state):
    root, dimms, data = state
    root2, dimms2 = devices(cfg)
    savefile.restore(data, cfg, root2, dimms2)
    assert root2.media.poison == root.media.poison
    assert root2.media.injected == root.media.injected
    assert [d.health for d in dimms2] == [d.health for d in dimms]
    assert root2.media.ars.current.result == root.media.ars.current.result
    assert savefile.capture(cfg, root2, dimms2) == data


def test_a_scrub_in_flight_resumes_with_the_time_it_had_left(cfg):
    clock = Clock()
    root, dimms = devices(cfg, clock)
    base, size = cfg.nvdimms[1].address, cfg.nvdimms[1].pmem_size
    scrub = root.media.ars.start(root.media.poison, base, size, ARS_TYPE_PERSISTENT, False, clock())
    clock.t += (scrub.deadline - scrub.started_at) / 4
    data = savefile.capture(cfg, root, dimms)
    later = Clock()
    later.t = 50_000.0
    root2, dimms2 = devices(cfg, later)
    savefile.restore(data, cfg, root2, dimms2)
    resumed = root2.media.ars.current
    assert resumed.result is None and resumed.seq == scrub.seq
    assert resumed.deadline - later.t == pytest.approx(scrub.deadline - clock.t)
    assert root2.media.ars.start(root2.media.poison, base, 4096, ARS_TYPE_PERSISTENT, True, later()).seq > scrub.seq


def test_the_file_begins_with_its_magic_and_version(state):
    data = state[2]
    assert data[:8] == b"PMEMDSAV"
    assert struct.unpack_from("<H", data, 8)[0] == savefile.SAVE_VERSION


@pytest.mark.parametrize("keep", [0, 7, 15, 16, 40, -5, -1])
def test_a_truncated_file_is_refused(cfg, state, keep):
    data = state[2]
    with pytest.raises(SaveFileError, match="truncated|corrupt|bad magic"):
        savefile.parse(data[:keep], cfg)


def test_a_byte_flipped_anywhere_is_refused(cfg, state):
    data = state[2]
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        with pytest.raises(SaveFileError):
            savefile.parse(bytes(bad), cfg)


def test_a_newer_version_is_refused_naming_both_versions(cfg, state):
    data = bytearray(state[2])
    struct.pack_into("<H", data, 8, savefile.SAVE_VERSION + 1)
    with pytest.raises(SaveFileError, match=f"version {savefile.SAVE_VERSION + 1} is not supported.*1 to {savefile.SAVE_VERSION}"):  # noqa: E501
        savefile.parse(bytes(data), cfg)


def test_a_version_1_file_without_ars_progress_loads(cfg, state):
    root, dimms, _ = state
    v1 = savefile.build(1, [
        (savefile.REC_LAYOUT, savefile._layout(cfg)),
        (savefile.REC_MEDIA, root.media.to_bytes()),
    ])
    root2, dimms2 = devices(cfg)
    saved = savefile.restore(v1, cfg, root2, dimms2)
    assert saved.version == 1
    assert root2.media.poison == root.media.poison
    assert root2.media.ars.current is None


def test_a_version_1_file_may_not_hold_a_version_2_record(cfg, state):
    root, dimms, _ = state
    v1 = savefile.build(1, [(savefile.REC_LAYOUT, savefile._layout(cfg)), (savefile.REC_MEDIA, root.media.to_bytes()),
                            (savefile.REC_ARS, savefile._ars_record(root.media))])
    with pytest.raises(SaveFileError, match="unknown type 4"):
        savefile.parse(v1, cfg)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_record_count_over_the_bound_is_refused_before_parsing(cfg):
    data = with_crc(b"PMEMDSAV" + struct.pack("<HHI", 2, 0, 0xFFFFFFFF))
    with pytest.raises(SaveFileError, match="more than the bound"):
        savefile.parse(data, cfg)


def test_a_record_length_past_the_end_is_refused(cfg):
    data = with_crc(b"PMEMDSAV" + struct.pack("<HHI", 2, 0, 1) + struct.pack("<HHI", 1, 0, 1 << 30) + b"x" * 8)
    with pytest.raises(SaveFileError, match="runs past the end"):
        savefile.parse(data, cfg)


def test_a_file_for_other_nvdimms_is_refused(tmp_path, state):
    (tmp_path / "other").mkdir()
    other = configmod.load(write_config(tmp_path / "other", tmp_path / "hv.sock", domid=5, nvdimms=1))
    with pytest.raises(SaveFileError, match="written for other NVDIMMs"):
        savefile.parse(state[2], other)


def test_an_oversized_file_is_refused_without_reading_it_all(cfg, tmp_path):
    path = tmp_path / "huge"
    with open(path, "wb") as f:
        f.truncate(savefile.MAX_FILE_SIZE + 4096)
    root, dimms = devices(cfg)
    with pytest.raises(SaveFileError, match="more than the"):
        savefile.load(path, cfg, root, dimms)


def test_a_refused_file_changes_nothing(cfg, state):
    root, dimms, data = state
    root2, dimms2 = devices(cfg)
    inject_error(root2, cfg.nvdimms[1].address, 0x100)
    before = savefile.capture(cfg, root2, dimms2)
    with pytest.raises(SaveFileError):
        savefile.restore(data[:-1] + bytes([data[-1] ^ 1]), cfg, root2, dimms2)
    assert savefile.capture(cfg, root2, dimms2) == before


def test_the_saved_file_is_written_0600(cfg, state, tmp_path):
    root, dimms, _ = state
    path = tmp_path / "state.bin"
    savefile.save(path, cfg, root, dimms)
    assert path.stat().st_mode & 0o777 == 0o600


# -- end to end: save → quit → a new daemon → load → the same answers ---------------------------

DOMID = 14
QUERIES = [("pmemd-query-poison", None), ("pmemd-query-health", None), ("pmemd-query-scrub", None),
           ("pmemd-query-labels", None), ("query-memory-devices", None)]


def guest_script(cfg: configmod.Config) -> list[dict]:
    """Every read-only _DSM query: ARS status and inject status on the root; SMART, thresholds, label size per DIMM."""
    calls = [{"dimm": None, "function": 3}, {"dimm": None, "function": 9}]
    for d in cfg.nvdimms:
        calls += [{"dimm": d.slot, "function": f} for f in (1, 2, 4)]
    return [{**c, "revision": 1} for c in calls]


async def guest_answers(config_path: Path, cfg: configmod.Config, hv: Path) -> list[dict]:
    run = await run_script_async(config_path, guest_script(cfg), "--hypervisor", str(hv))
    assert run.returncode == 0, run.stderr
    return [{k: v for k, v in answer.items() if k != "ioreqs"} for answer in run.results]


async def answers(qmp, config_path, cfg, hv) -> tuple[list, list]:
    return [await qmp.execute(c, a) for c, a in QUERIES], await guest_answers(config_path, cfg, hv)


async def test_save_quit_restart_and_load_gives_the_same_answer_to_every_query(sim, tmp_path):
    await sim.create_domain(DOMID, vcpus=2, lowmem=64 * MiB, unpause=True)
    config_path = write_config(tmp_path, sim.path, domid=DOMID, nvdimms=2)
    cfg = configmod.load(config_path)
    saved = tmp_path / "devices.state"
    base = cfg.nvdimms[1].address
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_guest, cfg, str(sim.path))
            async with connect(cfg.qmp_socket) as qmp:
                await qmp.execute("pmemd-inject-poison", {"address": base + 0x4000, "length": 0x400})
                await qmp.execute("pmemd-set-health", {"slot": 0, "spares": 3, "media-temperature": 45,
                                                       "dirty-shutdown": True})
                await qmp.execute("pmemd-start-scrub", {"slot": 1})
                await qmp.event("PMEMD_SCRUB_COMPLETED")
                before = await answers(qmp, config_path, cfg, sim.path)
                await qmp.execute("stop")
                await qmp.execute("xen-save-devices-state", {"filename": str(saved)})
                await qmp.execute("quit")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_guest, cfg, str(sim.path))
            async with connect(cfg.qmp_socket) as qmp:
                await qmp.execute("pmemd-inject-poison", {"address": base, "length": 0x100})  # to be replaced
                await qmp.execute("pmemd-set-health", {"slot": 1, "spares": 50, "fatal": True})
                changed = await answers(qmp, config_path, cfg, sim.path)
                await qmp.execute("stop")
                await qmp.execute("xen-load-devices-state", {"filename": str(saved)})
                assert (await qmp.execute("query-status"))["status"] == "paused"
                await qmp.execute("cont")
                after = await answers(qmp, config_path, cfg, sim.path)
            nursery.cancel_scope.cancel()
    assert changed != before  # the load below really had state to replace
    assert before[1][0]["status"] == 0 and len(before[1]) == 2 + 3 * len(cfg.nvdimms)
    assert after == before


async def test_loading_a_bad_file_over_qmp_is_a_clear_error_and_keeps_the_state(sim, tmp_path):
    await sim.create_domain(DOMID, vcpus=1, lowmem=64 * MiB, unpause=False)
    cfg = configmod.load(write_config(tmp_path, sim.path, domid=DOMID, nvdimms=2))
    bad = tmp_path / "future.state"
    bad.write_bytes(with_crc(b"PMEMDSAV" + struct.pack("<HHI", 99, 0, 0)))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_guest, cfg, str(sim.path))
        async with connect(cfg.qmp_socket) as qmp:
            await qmp.execute("stop")
            with pytest.raises(ExecuteError) as excinfo:
                await qmp.execute("xen-load-devices-state", {"filename": str(bad)})
            assert "version 99 is not supported" in str(excinfo.value)
            assert (await qmp.execute("query-status"))["status"] == "paused"
        nursery.cancel_scope.cancel()
